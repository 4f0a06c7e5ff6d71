//! rollcall-bench: the benchmark of issue 5. The same heartbeat workloads run against
//! rollcall-registry, etcd, Redis and a bare axum ceiling, all on loopback, and the figures are
//! rendered as a table and BENCHMARKS.md.
//!
//! From the outside in: [`suite`] starts the servers ([`server`]) and runs the workloads,
//! [`load`] drives one workload (closed loop or fixed rate), [`systems`] knows how each system
//! does each operation, and [`report`] renders what was measured.

pub mod load;
pub mod report;
pub mod server;
pub mod soak;
pub mod suite;
pub mod systems;
