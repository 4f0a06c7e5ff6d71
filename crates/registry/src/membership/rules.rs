//! The claim rules: which role a node must start as. [`decide`] is a pure function of what the
//! registry knows about the cluster at the moment of the claim ([`ClaimInputs`]); the caller
//! gathers the inputs under the state lock, persists what the decision says and applies it (see
//! the module above). Every rule has a stable id ([`Rule`]), which the decision carries to the
//! log, the dashboard and the answer's `reason`, and which README.md's rule list names.
//!
//! The rules, in the order they are tried ("the raft is known": a member heartbeated after the
//! cluster's last grant, or the registry relearned the raft from heartbeats; "expect" is the
//! known raft's stored size once there is one, the claim's before):
//!
//! | id                  | when                                                            | answer             |
//! |---------------------|-----------------------------------------------------------------|--------------------|
//! | `two-rafts`         | two rafts reported the name while the registry relearned it     | 409, wait          |
//! | `wrong-raft`        | the node reports another raft than the cluster's                | 409                |
//! | `address-conflict`  | the node's live record or claim has another address             | 409, wait          |
//! | `holder-joins`      | the node holds the bootstrap grant and others heartbeat         | `server`           |
//! | `same-answer`       | the node holds a live claim                                     | that claim's role  |
//! | `already-started`   | the node's agent already runs (it says so), the registry forgot | its role, never `bootstrap` |
//! | `startup-grace`     | the registry started (or resumed) less than the grace ago       | 503, wait          |
//! | `agent-only`        | the node asked to be an agent only                              | `agent`            |
//! | `expect-conflict`   | the raft is not known and live claims asked another `expect`    | 409, wait          |
//! | `raft-lost`         | the raft is known and no server heartbeated for `--raft-lost-after` (unless `rebootstrap-after` applies) | 409, wait |
//! | `slots-full`        | live servers, and voters that do not heartbeat here but are in the raft (the leader says so, or is one, silent), fill expect | `agent` |
//! | `raft-returning`    | fewer servers than expect are live, and the known raft's first server came back (after none was live) less than one TTL ago | 503, wait |
//! | `take-slot`         | some servers are live, fewer than expect (a live server the leader reports disconnected for an interval, silent since, holds no slot) | `server` |
//! | `no-live-server`    | members or claims are live, but no server                       | 503, wait          |
//! | `rebootstrap-after` | the raft is known, and gone longer than `--rebootstrap-after`   | `bootstrap`        |
//! | `reset-required`    | the raft is known (it had a raft): only an operator's reset     | 409, wait          |
//! | `quiet-period`      | nothing is live, but the last member left within the quiet period | 503, wait        |
//! | `bootstrap`         | none of the above                                               | `bootstrap`        |
//!
//! Over 500 lines because the whole decision is here, in the order of the table above, so
//! that the rules are readable in one place; their table of cases is in `rules/tests.rs`.

use std::time::Duration;

use rollcall_protocol::{GrantedRole, RaftIdentity};

/// The id of a claim rule. Stable: logs, dashboards and README.md refer to rules by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rule {
    TwoRafts,
    WrongRaft,
    AddressConflict,
    HolderJoins,
    SameAnswer,
    AlreadyStarted,
    StartupGrace,
    AgentOnly,
    ExpectConflict,
    RaftLost,
    SlotsFull,
    RaftReturning,
    TakeSlot,
    NoLiveServer,
    RebootstrapAfter,
    ResetRequired,
    QuietPeriod,
    Bootstrap,
}

impl Rule {
    /// Every rule, in the order [`decide`] tries them.
    pub const ALL: [Rule; 18] = [
        Rule::TwoRafts,
        Rule::WrongRaft,
        Rule::AddressConflict,
        Rule::HolderJoins,
        Rule::SameAnswer,
        Rule::AlreadyStarted,
        Rule::StartupGrace,
        Rule::AgentOnly,
        Rule::ExpectConflict,
        Rule::RaftLost,
        Rule::SlotsFull,
        Rule::RaftReturning,
        Rule::TakeSlot,
        Rule::NoLiveServer,
        Rule::RebootstrapAfter,
        Rule::ResetRequired,
        Rule::QuietPeriod,
        Rule::Bootstrap,
    ];

    pub fn id(self) -> &'static str {
        match self {
            Rule::TwoRafts => "two-rafts",
            Rule::WrongRaft => "wrong-raft",
            Rule::AddressConflict => "address-conflict",
            Rule::HolderJoins => "holder-joins",
            Rule::SameAnswer => "same-answer",
            Rule::AlreadyStarted => "already-started",
            Rule::StartupGrace => "startup-grace",
            Rule::AgentOnly => "agent-only",
            Rule::ExpectConflict => "expect-conflict",
            Rule::SlotsFull => "slots-full",
            Rule::RaftReturning => "raft-returning",
            Rule::TakeSlot => "take-slot",
            Rule::RaftLost => "raft-lost",
            Rule::NoLiveServer => "no-live-server",
            Rule::RebootstrapAfter => "rebootstrap-after",
            Rule::ResetRequired => "reset-required",
            Rule::QuietPeriod => "quiet-period",
            Rule::Bootstrap => "bootstrap",
        }
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.id())
    }
}

/// Counts of the live entries of a cluster other than the claiming node.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Others {
    /// Entries with a member record or a claim.
    pub any: usize,
    /// Entries that heartbeat (members in a running agent).
    pub members: usize,
    /// Entries that hold a server slot: a bootstrap or server claim, or a member reporting
    /// `server`, unless the raft's leader reports it disconnected.
    pub servers: usize,
    /// Live servers that hold no slot because the raft's leader (its view received within one
    /// TTL) reports them disconnected: their replacements take their slots.
    pub disconnected: usize,
    /// Voters of the raft that hold no slot here (their sidecar does not heartbeat: paused,
    /// cut off from the registry, or not yet re-registered) but are in the raft all the same:
    /// those the leader's view (received within one TTL) reports connected, or, while its
    /// view is older, the leader itself (see `ClusterState::unlisted_voters`).
    pub unlisted_voters: usize,
}

/// Everything a claim decision depends on.
#[derive(Debug, Clone)]
pub struct ClaimInputs<'a> {
    pub cluster: &'a str,
    pub node: &'a str,
    /// The servers the claimant's raft wants (`expect`).
    pub expect: u32,
    /// The claimant only ever wants to be a client agent.
    pub agent_only: bool,
    /// The role of the claimant's own live claim, if it holds one.
    pub own_claim: Option<GrantedRole>,
    /// What else is live in the cluster.
    pub others: Others,
    /// How long the registry has been up, and its startup grace.
    pub uptime: Duration,
    pub startup_grace: Duration,
    /// How long ago an entry of the cluster was last live before it expired or left, if ever.
    pub last_seen_ago: Option<Duration>,
    pub quiet_period: Duration,
    /// How long a refused claimant waits when no better bound is known.
    pub interval: Duration,
    /// The highest raft generation the cluster ever had (its grants, its known raft), if any.
    pub last_generation: Option<u64>,
    /// The address of the claimant's own live entry (its member record, else its claim), if
    /// it has one.
    pub own_address: Option<&'a str>,
    /// The claimant's address.
    pub address: &'a str,
    /// How long until the claimant's own live entry expires (for `address-conflict`).
    pub own_expires_in: Duration,
    /// The `expect` values of the other live claims, while the raft is not known.
    pub other_expects: &'a [u32],
    /// The cluster's raft, once one is known.
    pub raft: Option<&'a KnownRaft>,
    /// The last bootstrap grant, for the words of a refusal.
    pub grant: Option<GrantFacts<'a>>,
    /// `--rebootstrap-after`: off (`None`) by default.
    pub rebootstrap_after: Option<Duration>,
    /// The role the claimant's agent already runs as, if it says so.
    pub started_as: Option<GrantedRole>,
    /// The raft the claimant says its agent belongs to.
    pub reported_raft: Option<&'a RaftIdentity>,
    /// The cluster's raft identity: the known raft's, else the last grant's.
    pub cluster_raft: Option<&'a RaftIdentity>,
    /// Two rafts that reported themselves under the name while the registry relearned it.
    pub two_rafts: Option<(&'a RaftIdentity, &'a RaftIdentity)>,
    /// How long no server of the cluster has been live (counted at most from the registry's
    /// start or resumption), while none is; `None` while one is.
    pub no_live_server_for: Option<Duration>,
    /// `--raft-lost-after`: a known raft without a live server for this long is lost.
    pub raft_lost_after: Duration,
    /// How long ago the first server of the known raft heartbeated again after none was live
    /// (a raft that was paused, partitioned from the registry, or restarted whole), while the
    /// raft is known; `None` if that never happened since the raft became known.
    pub servers_returned_ago: Option<Duration>,
    /// The members' TTL: every live member heartbeats within it.
    pub ttl: Duration,
    /// The other live entries by name, for the words of a `raft-lost` refusal (filled only
    /// when no server is live).
    pub live_names: &'a [String],
}

/// What the registry knows of a cluster's raft once it is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownRaft {
    /// The generation of the grant it grew from; 0 when the registry relearned the raft from
    /// heartbeats after losing its data, and no grant told it the generation.
    pub generation: u64,
    /// The raft's size, authoritative once known; `None` when relearned without a grant.
    pub expect: Option<u32>,
    /// When the raft became known (wall clock), for people.
    pub known_at_unix_ms: u64,
}

/// The last grant, as a refusal names it.
#[derive(Debug, Clone, Copy)]
pub struct GrantFacts<'a> {
    pub node: &'a str,
    pub generation: u64,
    pub granted_at_unix_ms: u64,
}

/// Why a refusal needs more than waiting for time to pass; each is a stable API code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conflict {
    /// The node's name is live at another address.
    Address,
    /// Claims disagree on the raft's size.
    Expect,
    /// The cluster had a raft: a new one needs an operator's reset.
    ResetRequired,
    /// The claimant belongs to another raft than the cluster's.
    WrongRaft,
    /// The cluster's raft has had no live server for `--raft-lost-after`.
    RaftLost,
}

/// What [`decide`] answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The claimant starts as `role`.
    Grant {
        rule: Rule,
        role: GrantedRole,
        /// Set for a bootstrap: the generation of the new raft, to be stored as the grant.
        generation: Option<u64>,
        reason: String,
    },
    /// Not safe to answer yet: the claimant asks again after `retry_after`.
    Defer {
        rule: Rule,
        message: String,
        retry_after: Duration,
    },
    /// The claim conflicts with what the registry knows; it changes nothing, and the claimant
    /// asks again after `retry_after` (the conflict may end by itself, or by an operator).
    Refuse {
        rule: Rule,
        conflict: Conflict,
        message: String,
        retry_after: Duration,
    },
}

impl Decision {
    pub fn rule(&self) -> Rule {
        match self {
            Decision::Grant { rule, .. }
            | Decision::Defer { rule, .. }
            | Decision::Refuse { rule, .. } => *rule,
        }
    }
}

fn grant(rule: Rule, role: GrantedRole, reason: String) -> Decision {
    Decision::Grant {
        rule,
        role,
        generation: None,
        reason,
    }
}

fn defer(rule: Rule, message: String, retry_after: Duration) -> Decision {
    Decision::Defer {
        rule,
        message,
        retry_after,
    }
}

fn human(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_millis(d.as_millis() as u64))
}

fn refuse(rule: Rule, conflict: Conflict, message: String, retry_after: Duration) -> Decision {
    Decision::Refuse {
        rule,
        conflict,
        message,
        retry_after,
    }
}

fn wall_clock(unix_ms: u64) -> humantime::Rfc3339Timestamp {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(unix_ms))
}

/// The words of a `raft-lost` refusal: what is known, and both ways forward.
fn raft_lost_message(i: &ClaimInputs<'_>, raft: &KnownRaft, gone: Duration) -> String {
    /// Beyond this many live names, the message counts them instead of listing them.
    const MAX_NAMED: usize = 20;
    let cluster = i.cluster;
    let generation = raft.generation;
    let force = if i.live_names.is_empty() {
        String::new()
    } else if i.live_names.len() <= MAX_NAMED {
        format!(
            " --force {} (the live agents, forgotten with the raft)",
            i.live_names.join(",")
        )
    } else {
        format!(
            " --force <all {} live agents, listed by GET /v1/clusters/{cluster}>",
            i.live_names.len()
        )
    };
    format!(
        "the raft of cluster {cluster} (generation {generation}) is lost: no server of it has been live for {} (--raft-lost-after {}), and {} live member(s) or claimant(s) wait on it. If a survivor still has its data, restart it with ROLLCALL_FORCE_NEW_CLUSTER=1: it starts a one-member raft from that data and the others join it. If no data is left, reset the cluster: rollcall-registry reset {cluster} --generation {generation}{force}, or POST /v1/clusters/{cluster}/reset; the next claim then bootstraps a new raft",
        human(gone),
        human(i.raft_lost_after),
        i.others.any,
    )
}

/// Mode determination: the rules of the table above, tried in order.
pub fn decide(i: &ClaimInputs<'_>) -> Decision {
    let (cluster, node, o) = (i.cluster, i.node, i.others);
    if let Some((first, second)) = i.two_rafts {
        return refuse(
            Rule::TwoRafts,
            Conflict::ResetRequired,
            format!(
                "two rafts report themselves under cluster {cluster} ({first} and {second}) since the registry relearned it; it lists neither and answers no claim until an operator stops one and resets the cluster: rollcall-registry reset {cluster} --generation {}",
                first.generation
            ),
            i.interval,
        );
    }
    if let (Some(reported), Some(ours)) = (i.reported_raft, i.cluster_raft) {
        if reported != ours {
            return refuse(
                Rule::WrongRaft,
                Conflict::WrongRaft,
                format!(
                    "{node} says its agent belongs to raft {reported}, but cluster {cluster}'s raft is {ours}; a member of another raft is never listed or given join targets here (a raft that was never listed moves its data aside and claims again)"
                ),
                i.interval,
            );
        }
    }
    if let Some(own) = i.own_address.filter(|own| *own != i.address) {
        return refuse(
            Rule::AddressConflict,
            Conflict::Address,
            format!(
                "{node} is live in cluster {cluster} at {own}, and this claim comes from {}; a node name has one address at a time, so this claim waits until {node} at {own} leaves or expires (in {} at most)",
                i.address,
                human(i.own_expires_in)
            ),
            i.own_expires_in.max(Duration::from_secs(1)),
        );
    }
    match i.own_claim {
        Some(GrantedRole::Bootstrap) if o.members > 0 => {
            return grant(
                Rule::HolderJoins,
                GrantedRole::Server,
                format!(
                    "{node} held the bootstrap grant, but {} other member(s) now heartbeat, so the raft exists beyond it: it must join them as a server and never bootstrap again",
                    o.members
                ),
            )
        }
        Some(role) => {
            return grant(
                Rule::SameAnswer,
                role,
                format!("{node} already holds a live {role} claim; the same answer again"),
            )
        }
        None => {}
    }
    if let Some(started) = i.started_as {
        // The registry forgot this node's claim (it lost its data, or the claim expired while
        // the agent started), but the agent runs: it keeps its role, and a bootstrap holder
        // stays a server of the raft it started. Never a new bootstrap.
        let role = match started {
            GrantedRole::Bootstrap | GrantedRole::Server => GrantedRole::Server,
            GrantedRole::Agent => GrantedRole::Agent,
        };
        return grant(
            Rule::AlreadyStarted,
            role,
            format!(
                "{node}'s agent already runs as {started}; the registry holds no claim of it, so it keeps running as {role} and is never told to bootstrap"
            ),
        );
    }
    if i.uptime < i.startup_grace {
        return defer(
            Rule::StartupGrace,
            format!(
                "the registry started {} ago; for its startup grace of {} it only answers nodes that hold a claim, so that members of a running raft re-register before any new decision",
                human(i.uptime),
                human(i.startup_grace)
            ),
            i.startup_grace - i.uptime,
        );
    }
    if i.agent_only {
        return grant(
            Rule::AgentOnly,
            GrantedRole::Agent,
            format!("{node} asked to be an agent only"),
        );
    }
    if i.raft.is_none() {
        if let Some(other) = i.other_expects.iter().find(|e| **e != i.expect) {
            return refuse(
                Rule::ExpectConflict,
                Conflict::Expect,
                format!(
                    "{node} claims with expect={}, but a live claim of cluster {cluster} asked for expect={other}; servers that disagree on the raft's size must not form it (as Consul refuses a bootstrap_expect that differs), so fix the setting and claim again",
                    i.expect
                ),
                i.interval,
            );
        }
    }
    // Counted on heartbeating servers only: a server claim is a node still joining, and
    // joiners of a raft whose servers are all gone would otherwise hold its slots, and keep
    // it looking alive, for as long as they keep claiming.
    if let (Some(raft), Some(gone)) = (i.raft, i.no_live_server_for) {
        // With nothing live and `--rebootstrap-after` passed, that rule's new raft is the
        // operator's stated wish; `raft-lost` gives way to it.
        let rebootstrap = o.any == 0
            && matches!((i.rebootstrap_after, i.last_seen_ago), (Some(after), Some(ago)) if ago >= after);
        if gone >= i.raft_lost_after && !rebootstrap {
            return refuse(
                Rule::RaftLost,
                Conflict::RaftLost,
                raft_lost_message(i, raft, gone),
                i.interval,
            );
        }
    }
    let expect = i.raft.and_then(|r| r.expect).unwrap_or(i.expect);
    if o.servers + o.unlisted_voters >= expect as usize {
        let unlisted = if o.unlisted_voters > 0 {
            format!(
                " with {} voter(s) in the raft that do not heartbeat here (the raft's leader reports them connected, or is one, silent since its last report)",
                o.unlisted_voters
            )
        } else {
            String::new()
        };
        return grant(
            Rule::SlotsFull,
            GrantedRole::Agent,
            format!(
                "{} live server(s){unlisted} already fill expect={expect}; {node} joins as an agent",
                o.servers
            ),
        );
    }
    // A raft that comes back (its sidecars were paused, cut off from the registry, or all
    // restarted) re-registers member by member over one heartbeat interval. Until every member
    // still alive has heartbeated, fewer servers than expect are listed, and a newcomer given a
    // slot then would wait for the removal of a member that is not dead. Within one TTL of the
    // first return, every live member has heartbeated: only then is a missing one missing.
    if let Some(ago) = i.servers_returned_ago.filter(|ago| *ago < i.ttl) {
        if o.servers > 0 {
            return defer(
                Rule::RaftReturning,
                format!(
                    "no server of cluster {cluster}'s raft was live until {} ago; {} of expect={expect} are back, and the others may not have heartbeated yet, so no server slot is given until one TTL ({}) after the first came back: {node} asks again then",
                    human(ago),
                    o.servers,
                    human(i.ttl)
                ),
                (i.ttl - ago).max(Duration::from_millis(100)),
            );
        }
    }
    if o.servers > 0 {
        let replaces = if o.disconnected > 0 {
            format!(
                " ({} more live server(s) the raft's leader reports disconnected hold no slot: {node} takes the place of one, and its sidecar waits for the leader to remove the dead member)",
                o.disconnected
            )
        } else {
            String::new()
        };
        let unlisted = if o.unlisted_voters > 0 {
            format!(
                " (and {} by voter(s) in the raft that do not heartbeat here: the raft's leader reports them connected, or is one, silent since its last report)",
                o.unlisted_voters
            )
        } else {
            String::new()
        };
        return grant(
            Rule::TakeSlot,
            GrantedRole::Server,
            format!(
                "{} of expect={expect} server slots are taken{unlisted}{replaces}; {node} takes another and joins the live servers",
                o.servers + o.unlisted_voters
            ),
        );
    }
    if o.any > 0 {
        return defer(
            Rule::NoLiveServer,
            format!(
                "cluster {cluster} has {} live member(s) but no live server; a raft may still be running, so no node may bootstrap a new one until they are gone",
                o.any
            ),
            i.interval,
        );
    }
    // Saturating: a stored generation at u64::MAX (only a tampered store holds one) must not
    // panic or wrap to 0; the count is for people, not for the rules.
    let generation = i.last_generation.map_or(1, |g| g.saturating_add(1));
    if let Some(raft) = i.raft {
        let seen = i.last_seen_ago.map_or_else(
            || "never seen by this registry".to_string(),
            |ago| format!("last seen {} ago", human(ago)),
        );
        if let (Some(after), Some(ago)) = (i.rebootstrap_after, i.last_seen_ago) {
            if ago >= after {
                return Decision::Grant {
                    rule: Rule::RebootstrapAfter,
                    role: GrantedRole::Bootstrap,
                    generation: Some(generation),
                    reason: format!(
                        "the raft of cluster {cluster} (generation {}) was {seen}, longer than --rebootstrap-after {}; {node} starts raft generation {generation}",
                        raft.generation,
                        human(after)
                    ),
                };
            }
        }
        let granted = i
            .grant
            .filter(|g| g.generation == raft.generation)
            .map_or_else(
                || "relearned from its members' heartbeats".to_string(),
                |g| {
                    format!(
                        "granted to {} at {}",
                        g.node,
                        wall_clock(g.granted_at_unix_ms)
                    )
                },
            );
        return refuse(
            Rule::ResetRequired,
            Conflict::ResetRequired,
            format!(
                "cluster {cluster} already has a raft (generation {}, {granted}, known since {}); its members were {seen}. rollcall never starts a second raft on its own: if that raft is still running, start its members or give {node} their data; if it is gone for good, reset the cluster: rollcall-registry reset {cluster} --generation {} (in the registry's container: docker exec <registry> rollcall-registry reset ...), or POST /v1/clusters/{cluster}/reset with {{\"generation\":{}}}",
                raft.generation,
                wall_clock(raft.known_at_unix_ms),
                raft.generation,
                raft.generation,
            ),
            i.interval,
        );
    }
    if let Some(ago) = i.last_seen_ago.filter(|ago| *ago < i.quiet_period) {
        return defer(
            Rule::QuietPeriod,
            format!(
                "the last member of cluster {cluster} was seen {} ago; no new raft may start within the quiet period of {}",
                human(ago),
                human(i.quiet_period)
            ),
            i.quiet_period - ago,
        );
    }
    let reason = if generation == 1 {
        format!("no member or claim is live in cluster {cluster}; {node} starts its first raft")
    } else {
        format!(
            "cluster {cluster} had grant generation {} but its raft never became known (no member heartbeated after the grant), and nothing is live; {node} starts raft generation {generation}",
            generation - 1
        )
    };
    Decision::Grant {
        rule: Rule::Bootstrap,
        role: GrantedRole::Bootstrap,
        generation: Some(generation),
        reason,
    }
}

#[cfg(test)]
mod tests;
