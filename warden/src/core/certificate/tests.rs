use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, PublicKeyData};

use super::*;

/// Seconds since the epoch at which test certificates start.
const START_SECS: i64 = 1_800_000_000;
/// Lifetime of test certificates, in seconds.
const LIFETIME_SECS: i64 = 3_600;

fn at(seconds: i64) -> UnixMillis {
    UnixMillis(u64::try_from(seconds).unwrap() * 1000)
}

fn start() -> UnixMillis {
    at(START_SECS)
}

fn end() -> UnixMillis {
    at(START_SECS + LIFETIME_SECS)
}

struct Ca {
    params: CertificateParams,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        Self {
            params,
            key: KeyPair::generate().unwrap(),
        }
    }

    fn pem(&self) -> String {
        self.params.self_signed(&self.key).unwrap().pem()
    }

    fn issue(&self, key: &KeyPair, from_secs: i64, to_secs: i64) -> String {
        let mut params = CertificateParams::new(vec!["node-1.example".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, "node-1");
        params.not_before = time::OffsetDateTime::from_unix_timestamp(from_secs).unwrap();
        params.not_after = time::OffsetDateTime::from_unix_timestamp(to_secs).unwrap();
        let issuer = Issuer::from_params(&self.params, &self.key);
        let leaf = params.signed_by(key, &issuer).unwrap().pem();
        format!("{leaf}{}", self.pem())
    }
}

fn issued(ca: &Ca, key: &KeyPair, bundle_version: u64) -> Issued {
    Issued {
        chain_pem: ca.issue(key, START_SECS, START_SECS + LIFETIME_SECS),
        bundle_pem: ca.pem(),
        bundle_version,
    }
}

/// A core with an installed certificate from `ca` for a fresh key, at bundle version 3.
fn installed_core(ca: &Ca, unit: f64) -> CertificateCore {
    let (mut core, effects) = CertificateCore::start(None, false, start());
    assert_eq!(effects, vec![CertificateEffect::Request]);
    let key = KeyPair::generate().unwrap();
    let effects = core.on_issued(
        issued(ca, &key, 3),
        &key.subject_public_key_info(),
        start(),
        unit,
    );
    assert!(
        matches!(effects.as_slice(), [CertificateEffect::Install(_)]),
        "{effects:?}"
    );
    core.on_installed();
    core
}

fn failure_reason(effects: &[CertificateEffect]) -> String {
    match effects.first() {
        Some(CertificateEffect::Failed { reason, .. }) => reason.clone(),
        other => panic!("expected a failure first, got {other:?}"),
    }
}

#[test]
fn start_without_certificate_requests_at_once() {
    let (core, effects) = CertificateCore::start(None, false, start());
    assert_eq!(effects, vec![CertificateEffect::Request]);
    assert_eq!(core.status(), None);
}

#[test]
fn start_with_intact_files_waits_for_renewal() {
    let record = CertificateRecord {
        not_before: start(),
        not_after: end(),
        bundle_version: 2,
        renew_at: at(START_SECS + 2_000),
    };
    let (core, effects) = CertificateCore::start(Some(record), true, at(START_SECS + 10));
    assert_eq!(
        effects,
        vec![
            CertificateEffect::Status(CertificateStatus {
                not_after: end(),
                bundle_version: 2,
                refresh_failures: 0,
            }),
            CertificateEffect::WakeAt(record.renew_at),
        ]
    );
    assert_eq!(core.installed(), Some(&record));
}

#[test]
fn damaged_files_keep_bundle_floor() {
    let record = CertificateRecord {
        not_before: start(),
        not_after: end(),
        bundle_version: 7,
        renew_at: at(START_SECS + 2_000),
    };
    let (mut core, effects) = CertificateCore::start(Some(record), false, at(START_SECS + 10));
    assert_eq!(effects, vec![CertificateEffect::Request]);
    assert_eq!(core.installed(), None);

    let ca = Ca::new("ca");
    let key = KeyPair::generate().unwrap();
    let effects = core.on_issued(
        issued(&ca, &key, 6),
        &key.subject_public_key_info(),
        start(),
        0.5,
    );
    let reason = failure_reason(&effects);
    assert!(reason.contains("below the installed version 7"), "{reason}");
}

#[test]
fn renewal_with_a_slow_clock_is_before_expiry() {
    let ca = Ca::new("ca");
    let key = KeyPair::generate().unwrap();
    // The node's clock is ten minutes behind the control plane's.
    let behind = Duration::from_secs(600);
    let node_now = start().saturating_sub(behind);
    let (mut core, _) = CertificateCore::start(None, false, node_now);
    let effects = core.on_issued(
        issued(&ca, &key, 1),
        &key.subject_public_key_info(),
        node_now,
        0.999,
    );
    let Some(CertificateEffect::Install(installation)) = effects.first() else {
        panic!("expected an installation, got {effects:?}");
    };
    // Its renewal, converted to the control plane's clock, comes before the expiry.
    let renew_true = installation.record.renew_at.saturating_add(behind);
    let margin = installation.record.not_after.since(renew_true);
    assert!(
        margin >= Duration::from_secs(u64::try_from(LIFETIME_SECS).unwrap() / 4),
        "the node renews {margin:?} before expiry"
    );
}

#[test]
fn renewal_of_backdated_certificate_before_expiry() {
    let ca = Ca::new("ca");
    let key = KeyPair::generate().unwrap();
    // Valid from 2 s before now until 4 s after, as a control plane that backdates issues it.
    let reply = Issued {
        chain_pem: ca.issue(&key, START_SECS - 2, START_SECS + 4),
        bundle_pem: ca.pem(),
        bundle_version: 1,
    };
    let (mut core, _) = CertificateCore::start(None, false, start());
    let effects = core.on_issued(reply, &key.subject_public_key_info(), start(), 0.999);
    let Some(CertificateEffect::Install(installation)) = effects.first() else {
        panic!("expected an installation, got {effects:?}");
    };
    let margin = installation
        .record
        .not_after
        .since(installation.record.renew_at);
    assert!(
        margin >= Duration::from_millis(1_200),
        "the node renews {margin:?} before expiry"
    );
}

#[test]
fn renewal_due_at_its_time() {
    let ca = Ca::new("ca");
    let mut core = installed_core(&ca, 0.5);
    let record = *core.installed().unwrap();
    let before = record.renew_at.saturating_sub(Duration::from_millis(1));
    assert_eq!(
        core.tick(before),
        vec![CertificateEffect::WakeAt(record.renew_at)]
    );
    assert_eq!(core.tick(record.renew_at), vec![CertificateEffect::Request]);
    assert_eq!(
        core.tick(record.renew_at),
        Vec::new(),
        "one request at a time"
    );
}

#[test]
fn renewal_times_spread_over_half_to_seventy_percent() {
    let ca = Ca::new("ca");
    let key = KeyPair::generate().unwrap();
    let reply = issued(&ca, &key, 1);
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
    let lifetime_ms = f64::from(u32::try_from(LIFETIME_SECS * 1000).unwrap());
    let mut shares = Vec::new();
    for _ in 0..1_000 {
        let (mut core, _) = CertificateCore::start(None, false, start());
        let effects = core.on_issued(
            reply.clone(),
            &key.subject_public_key_info(),
            start(),
            rng.gen::<f64>(),
        );
        let Some(CertificateEffect::Install(installation)) = effects.first() else {
            panic!("expected an installation, got {effects:?}");
        };
        let offset = installation.record.renew_at.since(start());
        shares.push(offset.as_secs_f64() * 1000.0 / lifetime_ms);
    }
    let lowest = shares.iter().copied().fold(f64::MAX, f64::min);
    let highest = shares.iter().copied().fold(f64::MIN, f64::max);
    assert!(lowest >= 0.5, "lowest share {lowest}");
    assert!(highest <= 0.7, "highest share {highest}");
    assert!(
        lowest < 0.51,
        "renewals do not reach down to 50 %: {lowest}"
    );
    assert!(
        highest > 0.69,
        "renewals do not reach up to 70 %: {highest}"
    );
    let below_sixty = shares.iter().filter(|share| **share < 0.6).count();
    assert!(
        (400..=600).contains(&below_sixty),
        "{below_sixty} of 1000 below 60 %"
    );
}

#[test]
fn retry_delay_capped() {
    let day = Some(Duration::from_secs(86_400));
    let mut previous = Duration::ZERO;
    for failures in 1..=40 {
        let delay = retry_delay(failures, day, 0.999_999);
        assert!(delay <= RETRY_MAX, "failure {failures}: {delay:?}");
        assert!(
            delay >= previous,
            "failure {failures}: {delay:?} < {previous:?}"
        );
        previous = delay;
    }
    assert!(previous > Duration::from_secs(299), "{previous:?}");
    assert_eq!(retry_delay(1, day, 0.0), Duration::from_secs(1));
    assert!(retry_delay(1, day, 0.999_999) <= RETRY_BASE);

    // A tenth of a 100 s lifetime caps the delay at 10 s.
    let short = Some(Duration::from_secs(100));
    assert!(retry_delay(30, short, 0.999_999) <= Duration::from_secs(10));
    // A certificate of a few seconds still waits at least a second.
    let tiny = Some(Duration::from_secs(3));
    assert_eq!(retry_delay(30, tiny, 0.999_999), RETRY_MIN);
    assert_eq!(
        retry_delay(u32::MAX, None, 0.999_999),
        RETRY_MAX.mul_f64(0.5 + 0.5 * 0.999_999)
    );
}

#[test]
fn failure_keeps_current_certificate() {
    let ca = Ca::new("ca");
    let mut core = installed_core(&ca, 0.5);
    let record = *core.installed().unwrap();
    assert_eq!(core.tick(record.renew_at), vec![CertificateEffect::Request]);

    let effects = core.on_failed("timed out", record.renew_at, 0.0);
    assert_eq!(core.installed(), Some(&record));
    let retry_at = record.renew_at.saturating_add(RETRY_MIN);
    assert_eq!(
        effects,
        vec![
            CertificateEffect::Failed {
                reason: "timed out".into(),
                failures: 1,
                retry_at,
            },
            CertificateEffect::Status(CertificateStatus {
                not_after: record.not_after,
                bundle_version: 3,
                refresh_failures: 1,
            }),
            CertificateEffect::WakeAt(retry_at),
        ]
    );
    assert_eq!(core.tick(retry_at), vec![CertificateEffect::Request]);
}

#[test]
fn consecutive_failures_back_off_and_success_resets() {
    let (mut core, _) = CertificateCore::start(None, false, start());
    let mut now = start();
    let mut gaps = Vec::new();
    for _ in 0..6 {
        let effects = core.on_failed("unreachable", now, 0.999_999);
        let Some(CertificateEffect::WakeAt(retry_at)) = effects.last() else {
            panic!("expected a wake-up, got {effects:?}");
        };
        gaps.push(retry_at.since(now));
        assert_eq!(core.tick(*retry_at), vec![CertificateEffect::Request]);
        now = *retry_at;
    }
    assert!(gaps.windows(2).all(|pair| pair[0] < pair[1]), "{gaps:?}");

    let ca = Ca::new("ca");
    let key = KeyPair::generate().unwrap();
    core.on_issued(
        issued(&ca, &key, 1),
        &key.subject_public_key_info(),
        start(),
        0.5,
    );
    let effects = core.on_installed();
    assert!(
        matches!(effects.first(), Some(CertificateEffect::Installed(_))),
        "{effects:?}"
    );
    assert_eq!(core.status().unwrap().refresh_failures, 0);
}

#[test]
fn lower_bundle_version_rejected() {
    let ca = Ca::new("ca");
    let mut core = installed_core(&ca, 0.5);
    let record = *core.installed().unwrap();
    core.force();
    let key = KeyPair::generate().unwrap();
    let effects = core.on_issued(
        issued(&ca, &key, 2),
        &key.subject_public_key_info(),
        start(),
        0.5,
    );
    let reason = failure_reason(&effects);
    assert!(reason.contains("bundle version 2"), "{reason}");
    assert_eq!(core.installed(), Some(&record));
}

#[test]
fn equal_or_higher_bundle_version_accepted() {
    let ca = Ca::new("ca");
    let mut core = installed_core(&ca, 0.5);
    for version in [3, 4] {
        core.force();
        let key = KeyPair::generate().unwrap();
        let effects = core.on_issued(
            issued(&ca, &key, version),
            &key.subject_public_key_info(),
            start(),
            0.5,
        );
        assert!(
            matches!(effects.as_slice(), [CertificateEffect::Install(_)]),
            "{effects:?}"
        );
        core.on_installed();
        assert_eq!(core.status().unwrap().bundle_version, version);
    }
}

#[test]
fn certificate_for_other_key_rejected() {
    let ca = Ca::new("ca");
    let (mut core, _) = CertificateCore::start(None, false, start());
    let requested = KeyPair::generate().unwrap();
    let other = KeyPair::generate().unwrap();
    let effects = core.on_issued(
        issued(&ca, &other, 1),
        &requested.subject_public_key_info(),
        start(),
        0.5,
    );
    assert_eq!(
        failure_reason(&effects),
        ReplyError::KeyMismatch.to_string()
    );
    assert_eq!(core.installed(), None);
}

#[test]
fn expired_certificate_rejected() {
    let ca = Ca::new("ca");
    let (mut core, _) = CertificateCore::start(None, false, start());
    let key = KeyPair::generate().unwrap();
    let reply = issued(&ca, &key, 1);
    let effects = core.on_issued(reply, &key.subject_public_key_info(), end(), 0.5);
    let reason = failure_reason(&effects);
    assert!(
        reason.contains("does not include a time after now"),
        "{reason}"
    );
}

#[test]
fn certificate_from_unknown_ca_rejected() {
    let ca = Ca::new("ca");
    let stranger = Ca::new("stranger");
    let key = KeyPair::generate().unwrap();
    let reply = Issued {
        chain_pem: stranger.issue(&key, START_SECS, START_SECS + LIFETIME_SECS),
        bundle_pem: ca.pem(),
        bundle_version: 1,
    };
    // The stranger's certificate in the chain signs the leaf, so take only the leaf.
    let leaf_end = reply.chain_pem.find("-----END CERTIFICATE-----").unwrap()
        + "-----END CERTIFICATE-----\n".len();
    let reply = Issued {
        chain_pem: reply.chain_pem[..leaf_end].to_owned(),
        ..reply
    };
    assert_eq!(
        validate_reply(&reply, &key.subject_public_key_info(), 0, start()),
        Err(ReplyError::UnknownIssuer)
    );
}

#[test]
fn malformed_chain_rejected() {
    let ca = Ca::new("ca");
    let key = KeyPair::generate().unwrap();
    let spki = key.subject_public_key_info();
    let cases = [
        ("", "no certificate"),
        ("garbage", "no certificate"),
        (
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "does not parse as X.509",
        ),
        (
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            "PRIVATE KEY block",
        ),
    ];
    for (chain_pem, expected) in cases {
        let reply = Issued {
            chain_pem: chain_pem.to_owned(),
            bundle_pem: ca.pem(),
            bundle_version: 1,
        };
        let error = validate_reply(&reply, &spki, 0, start())
            .unwrap_err()
            .to_string();
        assert!(error.contains(expected), "{chain_pem:?}: {error}");
    }
    let huge = Issued {
        chain_pem: "x".repeat(CERTIFICATE_PEM_BYTES_MAX + 1),
        bundle_pem: ca.pem(),
        bundle_version: 1,
    };
    let error = validate_reply(&huge, &spki, 0, start())
        .unwrap_err()
        .to_string();
    assert!(error.contains("maximum"), "{error}");
    let no_bundle = Issued {
        bundle_pem: String::new(),
        ..issued(&ca, &key, 1)
    };
    assert!(matches!(
        validate_reply(&no_bundle, &spki, 0, start()),
        Err(ReplyError::Bundle(_))
    ));
}

#[test]
fn forced_renewal_requests_once() {
    let ca = Ca::new("ca");
    let mut core = installed_core(&ca, 0.5);
    assert_eq!(core.force(), vec![CertificateEffect::Request]);
    assert_eq!(
        core.force(),
        Vec::new(),
        "the outstanding request answers both"
    );
}

#[test]
fn reply_without_request_ignored() {
    let ca = Ca::new("ca");
    let mut core = installed_core(&ca, 0.5);
    let key = KeyPair::generate().unwrap();
    let effects = core.on_issued(
        issued(&ca, &key, 9),
        &key.subject_public_key_info(),
        start(),
        0.5,
    );
    assert_eq!(effects, Vec::new());
    assert_eq!(core.status().unwrap().bundle_version, 3);
}

#[test]
fn installed_files_checked_against_record() {
    let ca = Ca::new("ca");
    let key = KeyPair::generate().unwrap();
    let reply = issued(&ca, &key, 1);
    let validity = validate_reply(&reply, &key.subject_public_key_info(), 0, start()).unwrap();
    let record = CertificateRecord {
        not_before: validity.not_before,
        not_after: validity.not_after,
        bundle_version: 1,
        renew_at: start(),
    };
    assert_eq!(validity.not_before, start());
    assert_eq!(validity.not_after, end());
    let spki = key.subject_public_key_info();
    assert!(installed_matches(&record, &reply.chain_pem, &spki));
    let other = KeyPair::generate().unwrap();
    assert!(!installed_matches(
        &record,
        &reply.chain_pem,
        &other.subject_public_key_info()
    ));
    let later = CertificateRecord {
        not_after: end().saturating_add(Duration::from_secs(1)),
        ..record
    };
    assert!(!installed_matches(&later, &reply.chain_pem, &spki));
    assert!(!installed_matches(&record, "garbage", &spki));
}

proptest! {
    #[test]
    fn retry_delay_within_bounds(
        failures in 1u32..=u32::MAX,
        lifetime_ms in proptest::option::of(0u64..=10 * 86_400_000),
        unit in 0.0f64..1.0,
    ) {
        let lifetime = lifetime_ms.map(Duration::from_millis);
        let delay = retry_delay(failures, lifetime, unit);
        prop_assert!(delay >= RETRY_MIN, "{delay:?}");
        prop_assert!(delay <= RETRY_MAX, "{delay:?}");
        if let Some(lifetime) = lifetime {
            prop_assert!(delay <= (lifetime / 10).max(RETRY_MIN), "{delay:?} for {lifetime:?}");
        }
    }

    #[test]
    fn arbitrary_reply_never_panics(chain in ".{0,512}", bundle in ".{0,512}", version in any::<u64>()) {
        let reply = Issued { chain_pem: chain, bundle_pem: bundle, bundle_version: version };
        prop_assert!(validate_reply(&reply, b"key", 0, start()).is_err());
    }

    #[test]
    fn stored_record_round_trips(
        not_before in 0u64..u64::MAX / 2,
        lifetime in 1u64..u64::MAX / 4,
        bundle_version in any::<u64>(),
        renew_at in any::<u64>(),
    ) {
        let record = CertificateRecord {
            not_before: UnixMillis(not_before),
            not_after: UnixMillis(not_before + lifetime),
            bundle_version,
            renew_at: UnixMillis(renew_at),
        };
        let bytes = crate::core::record::encode_stored(&record).unwrap();
        let decoded: CertificateRecord = crate::core::record::decode_stored(&bytes).unwrap();
        prop_assert_eq!(decoded, record);
    }
}
