//! Time to replace the Warden's nftables table: rendering a rule set and running `nft -f -`
//! with it, inside a network namespace the bench creates. Needs root, iproute2 and nftables.
//!
//! ```text
//! cargo bench -p warden --bench firewall_apply -- [--rounds 200]
//! ```
//!
//! For each rule count it applies the rule set `--rounds` times and prints the median, 90th
//! percentile and maximum of the wall time of one `Firewall::apply`, which includes starting
//! the nft process. Half of the rules carry an expiry, so they render with a `meta time` match.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::time::{Duration, Instant};

use warden::access::AccessFile;
use warden::core::access::{render, Ports, RuleSet};
use warden_bus::messages::{AccessRule, Protocol};
use warden_bus::UnixMillis;
use warden_testkit::netns::{find_tool, End, Namespaces};

fn rules(count: usize) -> Vec<AccessRule> {
    (0..count)
        .map(|index| AccessRule {
            cidr: format!("10.{}.{}.0/24", index / 256, index % 256),
            protocol: match index % 4 {
                0 => Protocol::Tcp,
                1 => Protocol::Quic,
                2 => Protocol::Http,
                _ => Protocol::Websocket,
            },
            expires_at: (index % 2 == 0).then_some(UnixMillis(4_000_000_000_000)),
        })
        .collect()
}

/// Returns the value at `percent` of the sorted times, by nearest rank.
fn percentile(sorted: &[Duration], percent: usize) -> Duration {
    let index = (sorted.len().saturating_sub(1) * percent).div_ceil(100);
    sorted[index]
}

fn main() {
    let mut rounds = 200usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--rounds" {
            rounds = args
                .next()
                .and_then(|value| value.parse().ok())
                .unwrap_or(rounds);
        }
    }
    let pair = Namespaces::create();
    let firewall = AccessFile {
        nft: find_tool("nft"),
        table: Some("warden_bench".into()),
        ..AccessFile::default()
    }
    .validate(None)
    .unwrap();
    println!("rules  render      apply median  apply p90  apply max  (rounds {rounds})");
    for count in [0usize, 16, 64, 256] {
        let set = RuleSet {
            version: 1,
            open: rules(count),
        };
        let started = Instant::now();
        for _ in 0..rounds {
            std::hint::black_box(render("warden_bench", &Ports::default(), &set).unwrap());
        }
        let render_each = started.elapsed() / u32::try_from(rounds).unwrap();
        let firewall = firewall.clone();
        let mut times = pair.run_in(End::Node, move || {
            (0..rounds)
                .map(|_| {
                    let started = Instant::now();
                    firewall.apply(&set).unwrap();
                    started.elapsed()
                })
                .collect::<Vec<_>>()
        });
        times.sort();
        println!(
            "{count:>5}  {render_each:>9.1?}  {:>12.2?}  {:>9.2?}  {:>9.2?}",
            percentile(&times, 50),
            percentile(&times, 90),
            times.last().copied().unwrap_or_default(),
        );
    }
}
