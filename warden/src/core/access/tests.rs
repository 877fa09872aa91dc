use std::time::Duration;

use proptest::prelude::*;
use warden_bus::messages::{AccessRule, AccessRules, Protocol};
use warden_bus::UnixMillis;

use super::*;

const T0: UnixMillis = UnixMillis(1_800_000_000_000);

fn at(secs: u64) -> UnixMillis {
    T0.saturating_add(Duration::from_secs(secs))
}

fn rule(cidr: &str, protocol: Protocol, expires_in: Option<u64>) -> AccessRule {
    AccessRule {
        cidr: cidr.into(),
        protocol,
        expires_at: expires_in.map(at),
    }
}

fn document(version: u64, rules: Vec<AccessRule>) -> AccessRules {
    AccessRules { version, rules }
}

fn applied(effects: &[AccessEffect]) -> Option<&RuleSet> {
    effects.iter().find_map(|effect| match effect {
        AccessEffect::Apply(set) => Some(set),
        AccessEffect::Persist(_) => None,
    })
}

fn persisted(effects: &[AccessEffect]) -> Option<&AccessRecord> {
    effects.iter().find_map(|effect| match effect {
        AccessEffect::Persist(record) => Some(record),
        AccessEffect::Apply(_) => None,
    })
}

#[test]
fn new_node_applies_an_empty_rule_set() {
    let (core, effects) = AccessCore::start(None, T0);
    assert_eq!(
        effects,
        vec![AccessEffect::Apply(RuleSet {
            version: 0,
            open: Vec::new()
        })]
    );
    assert_eq!(core.version(), 0);
}

#[test]
fn install_persists_before_it_applies() {
    let (mut core, _) = AccessCore::start(None, T0);
    let rules = vec![rule("10.0.0.0/8", Protocol::Tcp, None)];
    let effects = core.install(&document(1, rules.clone()), T0).unwrap();
    assert!(matches!(effects.first(), Some(AccessEffect::Persist(record)) if record.version == 1));
    assert!(matches!(effects.last(), Some(AccessEffect::Apply(set)) if set.open == rules));
    assert_eq!(core.version(), 1);
}

#[test]
fn lower_version_is_refused() {
    let (mut core, _) = AccessCore::start(None, T0);
    core.install(&document(5, Vec::new()), T0).unwrap();
    let error = core.install(&document(4, Vec::new()), T0).unwrap_err();
    assert_eq!(
        error,
        AccessError::Stale {
            offered: 4,
            installed: 5
        }
    );
    assert_eq!(core.version(), 5);
}

#[test]
fn same_version_with_other_rules_is_refused() {
    let (mut core, _) = AccessCore::start(None, T0);
    core.install(&document(2, Vec::new()), T0).unwrap();
    let other = document(2, vec![rule("0.0.0.0/0", Protocol::Tcp, None)]);
    assert!(matches!(
        core.install(&other, T0),
        Err(AccessError::Stale { .. })
    ));
    assert!(core.record().rules.is_empty());
}

#[test]
fn same_document_again_is_applied_again() {
    let (mut core, _) = AccessCore::start(None, T0);
    let same = document(2, vec![rule("10.0.0.0/8", Protocol::Http, None)]);
    core.install(&same, T0).unwrap();
    let effects = core.install(&same, at(1)).unwrap();
    assert_eq!(applied(&effects).map(|set| set.open.len()), Some(1));
}

#[test]
fn version_zero_is_invalid() {
    let (mut core, _) = AccessCore::start(None, T0);
    assert!(matches!(
        core.install(&document(0, Vec::new()), T0),
        Err(AccessError::Invalid(_))
    ));
}

#[test]
fn rule_closes_at_its_expiry() {
    let (mut core, _) = AccessCore::start(None, T0);
    let keep = rule("10.0.0.0/8", Protocol::Tcp, None);
    let brief = rule("192.0.2.0/24", Protocol::Tcp, Some(10));
    core.install(&document(1, vec![keep.clone(), brief]), T0)
        .unwrap();
    assert_eq!(core.next_expiry(), Some(at(10)));
    assert!(core.tick(at(9)).is_empty());
    let effects = core.tick(at(10));
    assert_eq!(
        applied(&effects).map(|set| set.open.clone()),
        Some(vec![keep])
    );
    assert_eq!(
        persisted(&effects).map(|record| record.closed_through),
        Some(at(10))
    );
    assert_eq!(core.next_expiry(), None);
}

#[test]
fn clock_stepping_back_does_not_reopen_a_rule() {
    let (mut core, _) = AccessCore::start(None, T0);
    core.install(
        &document(1, vec![rule("192.0.2.0/24", Protocol::Tcp, Some(10))]),
        T0,
    )
    .unwrap();
    core.tick(at(11));
    assert!(core.tick(at(5)).is_empty());
    assert_eq!(core.applied().map(|set| set.open.len()), Some(0));
}

#[test]
fn restart_with_clock_behind_keeps_expired_rule_closed() {
    let (mut core, _) = AccessCore::start(None, T0);
    core.install(
        &document(1, vec![rule("192.0.2.0/24", Protocol::Tcp, Some(10))]),
        T0,
    )
    .unwrap();
    let effects = core.tick(at(20));
    let record = persisted(&effects).cloned().unwrap();
    let (_, effects) = AccessCore::start(Some(record), at(3));
    assert_eq!(applied(&effects).map(|set| set.open.len()), Some(0));
}

#[test]
fn new_document_judges_expiry_afresh() {
    let (mut core, _) = AccessCore::start(None, T0);
    core.install(
        &document(1, vec![rule("192.0.2.0/24", Protocol::Tcp, Some(10))]),
        T0,
    )
    .unwrap();
    core.tick(at(100));
    let effects = core
        .install(
            &document(2, vec![rule("192.0.2.0/24", Protocol::Tcp, Some(10))]),
            at(5),
        )
        .unwrap();
    assert_eq!(applied(&effects).map(|set| set.open.len()), Some(1));
}

#[test]
fn restart_reapplies_the_stored_document() {
    let (mut core, _) = AccessCore::start(None, T0);
    let rules = vec![rule("10.0.0.0/8", Protocol::Quic, None)];
    let effects = core.install(&document(3, rules.clone()), T0).unwrap();
    let record = persisted(&effects).cloned().unwrap();
    let (restarted, effects) = AccessCore::start(Some(record), at(1));
    assert_eq!(restarted.version(), 3);
    assert_eq!(
        applied(&effects),
        Some(&RuleSet {
            version: 3,
            open: rules
        })
    );
}

#[test]
fn render_opens_rule_ports_only() {
    let set = RuleSet {
        version: 7,
        open: vec![
            rule("10.1.2.3/8", Protocol::Tcp, None),
            AccessRule {
                cidr: "2001:db8::1/32".into(),
                protocol: Protocol::Quic,
                expires_at: Some(UnixMillis(1_800_000_000_999)),
            },
            rule("192.0.2.7/32", Protocol::Http, None),
            rule("192.0.2.8/32", Protocol::Websocket, None),
        ],
    };
    let script = render("warden", &Ports::default(), &set).unwrap();
    for line in [
        "table inet warden {}",
        "delete table inet warden",
        "iif \"lo\" accept",
        "ip saddr 10.0.0.0/8 tcp dport 8090 accept",
        "ip6 saddr 2001:db8::/32 udp dport 8080 meta time < 1800000000 accept",
        "ip saddr 192.0.2.7/32 tcp dport 3000 accept",
        "ip saddr 192.0.2.8/32 tcp dport 8092 accept",
        "tcp dport { 3000, 8090, 8092 } drop",
        "udp dport { 8080 } drop",
        "access rules version 7",
    ] {
        assert!(script.contains(line), "missing {line:?} in:\n{script}");
    }
    let accept = script.find("8090 accept").unwrap();
    let drop = script.find("8092 } drop").unwrap();
    assert!(accept < drop, "the drop comes before an accept:\n{script}");
}

#[test]
fn render_refuses_a_cidr_that_is_not_one() {
    let set = RuleSet {
        version: 1,
        open: vec![rule(
            "10.0.0.0/8 accept; flush ruleset",
            Protocol::Tcp,
            None,
        )],
    };
    assert!(render("warden", &Ports::default(), &set).is_err());
}

#[test]
fn table_names_are_plain_words() {
    assert!(validate_table_name("warden").is_ok());
    assert!(validate_table_name("warden_2").is_ok());
    for bad in [
        "",
        "Warden",
        "2warden",
        "warden; flush ruleset",
        "a b",
        &"x".repeat(33),
    ] {
        assert!(validate_table_name(bad).is_err(), "{bad:?} was accepted");
    }
}

#[test]
fn ports_sharing_a_transport_must_differ() {
    let mut ports = Ports::default();
    assert!(ports.validate().is_ok());
    ports.http = ports.tcp;
    assert!(ports.validate().unwrap_err().contains("both"));
    let mut ports = Ports::default();
    // QUIC is UDP, so it may share a number with a TCP port.
    ports.quic = ports.tcp;
    assert!(ports.validate().is_ok());
    ports.websocket = 0;
    assert!(ports.validate().is_err());
}

#[derive(Debug, Clone)]
enum Step {
    Install {
        version: u64,
        rules: Vec<AccessRule>,
    },
    Tick,
    Restart,
    ClockJump(i64),
    Advance(u64),
}

fn rule_strategy() -> impl Strategy<Value = AccessRule> {
    (0u8..4, 0u8..4, proptest::option::of(0u64..600)).prop_map(|(net, protocol, expiry)| {
        let protocol = match protocol {
            0 => Protocol::Tcp,
            1 => Protocol::Quic,
            2 => Protocol::Http,
            _ => Protocol::Websocket,
        };
        rule(&format!("10.{net}.0.0/16"), protocol, expiry)
    })
}

fn step_strategy() -> impl Strategy<Value = Step> {
    prop_oneof![
        (1u64..8, proptest::collection::vec(rule_strategy(), 0..5))
            .prop_map(|(version, rules)| Step::Install { version, rules }),
        Just(Step::Tick),
        Just(Step::Restart),
        (-300i64..300).prop_map(Step::ClockJump),
        (0u64..120).prop_map(Step::Advance),
    ]
}

proptest! {
    /// Runs documents, ticks, restarts and clock steps in any order. Every applied set is an
    /// accepted document's rules minus the rules expired by then, and versions never go down.
    /// A rule once closed by a document stays closed until another document arrives.
    #[test]
    fn applied_rules_always_come_from_one_document(steps in proptest::collection::vec(step_strategy(), 1..40)) {
        let mut true_secs = 0u64;
        let mut offset = 0i64;
        let node_now = |true_secs: u64, offset: i64| UnixMillis(T0.0.saturating_add_signed((true_secs as i64 + offset) * 1000));
        let (mut core, _) = AccessCore::start(None, node_now(0, 0));
        let mut disk: Option<AccessRecord> = None;
        let mut accepted: Vec<AccessRules> = Vec::new();
        let mut last_version = 0u64;
        let mut closed: Vec<AccessRule> = Vec::new();
        for step in steps {
            let now = node_now(true_secs, offset);
            let effects = match step {
                Step::Install { version, rules } => {
                    let offered = document(version, rules);
                    match core.install(&offered, now) {
                        Ok(effects) => {
                            if offered.version != last_version {
                                closed.clear();
                            }
                            accepted.push(offered);
                            effects
                        }
                        Err(_) => Vec::new(),
                    }
                }
                Step::Tick => core.tick(now),
                Step::Restart => {
                    let (restarted, effects) = AccessCore::start(disk.clone(), now);
                    core = restarted;
                    effects
                }
                Step::ClockJump(secs) => { offset += secs; Vec::new() }
                Step::Advance(secs) => { true_secs += secs; Vec::new() }
            };
            for effect in effects {
                match effect {
                    AccessEffect::Persist(record) => disk = Some(record),
                    AccessEffect::Apply(set) => {
                        prop_assert!(set.version >= last_version, "version {} after {last_version}", set.version);
                        last_version = set.version;
                        let source = accepted.iter().rev().find(|doc| doc.version == set.version);
                        let rules = source.map(|doc| doc.rules.clone()).unwrap_or_default();
                        prop_assert_eq!(&set.open, &open_rules(&rules, core.record().closed_through.max(now)));
                        for rule in &closed {
                            prop_assert!(!set.open.contains(rule), "{:?} reopened", rule);
                        }
                        for rule in rules.iter().filter(|rule| !set.open.contains(rule)) {
                            closed.push(rule.clone());
                        }
                    }
                }
            }
        }
    }
}
