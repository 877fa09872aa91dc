//! The oracle's view of access rules: which signed documents each node received, and whether
//! a node's firewall table equals one of them minus the expired rules.
//!
//! The simulated kernel table is the [`RuleSet`] that the Warden last applied. Like nftables with
//! the rendered `meta time` matches, it lets a rule through only before the whole second in
//! which the rule expires, whether or not the Warden runs.

use std::collections::BTreeMap;
use std::time::Duration;

use warden::core::access::RuleSet;
use warden_bus::messages::{AccessRule, AccessRules};
use warden_bus::UnixMillis;

/// The invariant about access rules.
pub const ACCESS_INVARIANT: &str =
    "a node's access rules always equal some signed document, minus expired rules";

/// How long after a rule's expiry the Warden may leave it in the table: the kernel closes it at
/// the whole second before, and the Warden's one-second check takes it out after a clock step.
pub const CLEANUP_GRACE: Duration = Duration::from_secs(2);

/// The oracle's record of one node's access rules.
#[derive(Debug, Clone, Default)]
struct Watch {
    /// The documents this node executed with a valid signature, by version.
    documents: BTreeMap<u64, Vec<AccessRule>>,
    /// Highest version the node's table has held.
    table_version: u64,
    /// Latest time the node's clock has read, as far as the oracle saw.
    clock_high_water: UnixMillis,
}

/// Per-node checks of access rules.
#[derive(Debug, Clone, Default)]
pub struct AccessOracle {
    nodes: Vec<Watch>,
}

/// Returns whether the simulated kernel lets `rule` through at `now`: before the whole second
/// of its expiry, as the rendered `meta time < seconds` match does.
pub fn kernel_open(rule: &AccessRule, now: UnixMillis) -> bool {
    rule.expires_at
        .is_none_or(|expiry| now.0 / 1000 < expiry.0 / 1000)
}

impl AccessOracle {
    /// Creates an oracle for `nodes` nodes.
    pub fn new(nodes: usize) -> Self {
        Self {
            nodes: vec![Watch::default(); nodes],
        }
    }

    /// Notes the node's clock reading, before a step or after any event.
    pub fn saw_clock(&mut self, node: usize, now: UnixMillis) {
        if let Some(watch) = self.nodes.get_mut(node) {
            watch.clock_high_water = watch.clock_high_water.max(now);
        }
    }

    /// Records a document a node executed. `signed` is the result of the oracle's own check of
    /// the task key's signature, and only signed documents may reach a table.
    pub fn executed(&mut self, node: usize, document: &AccessRules, signed: bool) {
        if !signed {
            return;
        }
        if let Some(watch) = self.nodes.get_mut(node) {
            watch
                .documents
                .insert(document.version, document.rules.clone());
        }
    }

    /// Checks a table that the node's Warden just applied, or that the kernel still has.
    ///
    /// It fails if the table:
    /// - goes back to a lower version;
    /// - has a rule of no validly signed document, or mixes documents;
    /// - lacks a rule of its document that has not expired, allowing for rules the Warden
    ///   closed when its clock read later and for the rounding to whole seconds;
    /// - when `settled` (the Warden runs and its clock did not step lately), still has a rule
    ///   that expired more than [`CLEANUP_GRACE`] ago.
    pub fn check(
        &mut self,
        node: usize,
        table: Option<&RuleSet>,
        now: UnixMillis,
        settled: bool,
    ) -> Result<(), String> {
        self.saw_clock(node, now);
        let (Some(table), Some(watch)) = (table, self.nodes.get_mut(node)) else {
            return Ok(());
        };
        if table.version < watch.table_version {
            return Err(format!(
                "the table went from access rules version {} back to {}",
                watch.table_version, table.version
            ));
        }
        watch.table_version = table.version;

        let document = source(watch, table)?;
        let closed_through = watch
            .clock_high_water
            .saturating_add(Duration::from_secs(1));
        let missing = document.iter().find(|rule| {
            rule.expires_at.is_none_or(|expiry| expiry > closed_through)
                && !table.open.contains(rule)
        });
        if let Some(missing) = missing {
            return Err(format!(
                "the table of version {} lacks {missing:?}, which has not expired at {now}",
                table.version
            ));
        }

        if settled {
            let horizon = now.saturating_sub(CLEANUP_GRACE);
            let stale = table
                .open
                .iter()
                .find(|rule| rule.expires_at.is_some_and(|expiry| expiry < horizon));
            if let Some(stale) = stale {
                return Err(format!(
                    "the table still has {stale:?} at {now}, although the Warden ran and its clock held steady"
                ));
            }
        }
        Ok(())
    }

    /// Returns whether the table is the document of `version` minus the rules expired at `now`.
    pub fn converged(
        &self,
        node: usize,
        table: Option<&RuleSet>,
        version: u64,
        now: UnixMillis,
    ) -> bool {
        let (Some(table), Some(watch)) = (table, self.nodes.get(node)) else {
            return false;
        };
        let Some(document) = watch.documents.get(&version) else {
            return false;
        };
        let open: Vec<&AccessRule> = table
            .open
            .iter()
            .filter(|rule| kernel_open(rule, now))
            .collect();
        let expected: Vec<&AccessRule> = document
            .iter()
            .filter(|rule| kernel_open(rule, now))
            .collect();
        table.version == version && open == expected
    }
}

/// Returns the signed document a table comes from, after checking that every rule of the
/// table is in it. A table of version 0 has no document and must be empty.
fn source<'a>(watch: &'a Watch, table: &RuleSet) -> Result<&'a [AccessRule], String> {
    if table.version == 0 {
        return match table.open.first() {
            None => Ok(&[]),
            Some(rule) => Err(format!(
                "the table has {rule:?} before any document arrived"
            )),
        };
    }
    let document = watch.documents.get(&table.version).ok_or_else(|| {
        format!(
            "the table has access rules version {} that no validly signed task carried",
            table.version
        )
    })?;
    if let Some(stranger) = table.open.iter().find(|rule| !document.contains(rule)) {
        return Err(format!(
            "the table of version {} has {stranger:?}, which that document does not have",
            table.version
        ));
    }
    Ok(document)
}

#[cfg(test)]
mod tests {
    use warden_bus::messages::Protocol;

    use super::*;

    const NOW: UnixMillis = UnixMillis(1_800_000_000_000);

    fn rule(cidr: &str, expires_at: Option<UnixMillis>) -> AccessRule {
        AccessRule {
            cidr: cidr.into(),
            protocol: Protocol::Tcp,
            expires_at,
        }
    }

    fn oracle_with(rules: Vec<AccessRule>) -> AccessOracle {
        let mut oracle = AccessOracle::new(1);
        oracle.executed(0, &AccessRules { version: 2, rules }, true);
        oracle
    }

    #[test]
    fn table_equal_to_document_passes() {
        let rules = vec![rule("10.0.0.0/8", None)];
        let mut oracle = oracle_with(rules.clone());
        let table = RuleSet {
            version: 2,
            open: rules,
        };
        assert!(oracle.check(0, Some(&table), NOW, true).is_ok());
    }

    #[test]
    fn rule_of_no_document_fails() {
        let mut oracle = oracle_with(vec![rule("10.0.0.0/8", None)]);
        let table = RuleSet {
            version: 2,
            open: vec![rule("0.0.0.0/0", None)],
        };
        assert!(oracle.check(0, Some(&table), NOW, true).is_err());
    }

    #[test]
    fn unsigned_document_fails() {
        let mut oracle = AccessOracle::new(1);
        let rules = vec![rule("0.0.0.0/0", None)];
        oracle.executed(
            0,
            &AccessRules {
                version: 9,
                rules: rules.clone(),
            },
            false,
        );
        let table = RuleSet {
            version: 9,
            open: rules,
        };
        assert!(oracle.check(0, Some(&table), NOW, true).is_err());
    }

    #[test]
    fn missing_live_rule_fails() {
        let later = NOW.saturating_add(Duration::from_secs(60));
        let mut oracle = oracle_with(vec![rule("10.0.0.0/8", Some(later))]);
        let table = RuleSet {
            version: 2,
            open: Vec::new(),
        };
        assert!(oracle.check(0, Some(&table), NOW, true).is_err());
    }

    #[test]
    fn rule_closed_before_clock_step_may_be_missing() {
        let soon = NOW.saturating_add(Duration::from_secs(60));
        let mut oracle = oracle_with(vec![rule("10.0.0.0/8", Some(soon))]);
        oracle.saw_clock(0, NOW.saturating_add(Duration::from_secs(120)));
        let table = RuleSet {
            version: 2,
            open: Vec::new(),
        };
        assert!(oracle.check(0, Some(&table), NOW, true).is_ok());
    }

    #[test]
    fn stale_rule_fails_when_settled() {
        let past = NOW.saturating_sub(Duration::from_secs(10));
        let rules = vec![rule("10.0.0.0/8", Some(past))];
        let mut oracle = oracle_with(rules.clone());
        let table = RuleSet {
            version: 2,
            open: rules,
        };
        assert!(oracle.check(0, Some(&table), NOW, false).is_ok());
        assert!(oracle.check(0, Some(&table), NOW, true).is_err());
    }

    #[test]
    fn lower_version_fails() {
        let mut oracle = oracle_with(Vec::new());
        oracle.executed(
            0,
            &AccessRules {
                version: 1,
                rules: Vec::new(),
            },
            true,
        );
        let newer = RuleSet {
            version: 2,
            open: Vec::new(),
        };
        let older = RuleSet {
            version: 1,
            open: Vec::new(),
        };
        assert!(oracle.check(0, Some(&newer), NOW, true).is_ok());
        assert!(oracle.check(0, Some(&older), NOW, true).is_err());
    }

    #[test]
    fn kernel_closes_at_the_whole_second() {
        let rule = rule("10.0.0.0/8", Some(UnixMillis(5_500)));
        assert!(kernel_open(&rule, UnixMillis(4_999)));
        assert!(!kernel_open(&rule, UnixMillis(5_000)));
    }
}
