//! The claim rules: which role a node must start as. [`decide`] is a pure function of what the
//! registry knows about the cluster at the moment of the claim ([`ClaimInputs`]); the caller
//! gathers the inputs under the state lock, persists what the decision says and applies it (see
//! the module above). Every rule has a stable id ([`Rule`]), which the decision carries to the
//! log, the dashboard and the answer's `reason`, and which README.md's rule list names.
//!
//! The rules, in the order they are tried:
//!
//! | id                | when                                                      | answer            |
//! |-------------------|-----------------------------------------------------------|-------------------|
//! | `holder-joins`    | the node holds the bootstrap grant and others heartbeat   | `server`          |
//! | `same-answer`     | the node holds a live claim                               | that claim's role |
//! | `startup-grace`   | the registry started less than the startup grace ago      | not ready         |
//! | `agent-only`      | the node asked to be an agent only                        | `agent`           |
//! | `slots-full`      | live servers already fill `expect`                        | `agent`           |
//! | `take-slot`       | some servers are live, fewer than `expect`                | `server`          |
//! | `no-live-server`  | members or claims are live, but no server                 | not ready         |
//! | `quiet-period`    | nothing is live, but the last member left within the quiet period | not ready |
//! | `bootstrap`       | none of the above                                         | `bootstrap`       |

use std::time::Duration;

use rollcall_protocol::GrantedRole;

/// The id of a claim rule. Stable: logs, dashboards and README.md refer to rules by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rule {
    HolderJoins,
    SameAnswer,
    StartupGrace,
    AgentOnly,
    SlotsFull,
    TakeSlot,
    NoLiveServer,
    QuietPeriod,
    Bootstrap,
}

impl Rule {
    /// Every rule, in the order [`decide`] tries them.
    pub const ALL: [Rule; 9] = [
        Rule::HolderJoins,
        Rule::SameAnswer,
        Rule::StartupGrace,
        Rule::AgentOnly,
        Rule::SlotsFull,
        Rule::TakeSlot,
        Rule::NoLiveServer,
        Rule::QuietPeriod,
        Rule::Bootstrap,
    ];

    pub fn id(self) -> &'static str {
        match self {
            Rule::HolderJoins => "holder-joins",
            Rule::SameAnswer => "same-answer",
            Rule::StartupGrace => "startup-grace",
            Rule::AgentOnly => "agent-only",
            Rule::SlotsFull => "slots-full",
            Rule::TakeSlot => "take-slot",
            Rule::NoLiveServer => "no-live-server",
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
    /// `server`.
    pub servers: usize,
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
    /// The generation of the cluster's last bootstrap grant, if it ever had one.
    pub last_generation: Option<u64>,
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
}

impl Decision {
    pub fn rule(&self) -> Rule {
        match self {
            Decision::Grant { rule, .. } | Decision::Defer { rule, .. } => *rule,
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

/// Mode determination: the rules of the table above, tried in order.
pub fn decide(i: &ClaimInputs<'_>) -> Decision {
    let (cluster, node, o) = (i.cluster, i.node, i.others);
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
    if o.servers >= i.expect as usize {
        return grant(
            Rule::SlotsFull,
            GrantedRole::Agent,
            format!(
                "{} live server(s) already fill expect={}; {node} joins as an agent",
                o.servers, i.expect
            ),
        );
    }
    if o.servers > 0 {
        return grant(
            Rule::TakeSlot,
            GrantedRole::Server,
            format!(
                "{} of expect={} server slots are taken; {node} takes another and joins the live servers",
                o.servers, i.expect
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
    // Saturating: a stored generation at u64::MAX (only a tampered store holds one) must not
    // panic or wrap to 0; the count is for people, not for the rules.
    let generation = i.last_generation.map_or(1, |g| g.saturating_add(1));
    let reason = if generation == 1 {
        format!("no member or claim is live in cluster {cluster}; {node} starts its first raft")
    } else {
        format!(
            "cluster {cluster} has had no live member for the quiet period; {node} starts raft generation {generation}"
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
