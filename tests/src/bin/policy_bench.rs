//! The policy engine on one core over the public corpus: validations per second and p50/p99
//! per validation, with DNS off (the offline rows) and with the DNS checks answered from a
//! warm cache (every row, against the fixture dnsmasq). Figures go to `--out FILE` as JSON.

use std::time::{Duration, Instant};

use helo_filter::{
    config::PolicyFile,
    policy::{HeloInput, PolicyEngine},
};
use xtask::bench::{
    BenchArgs,
    figure::{Figure, Goal},
};

const IDENTITY: &str = "[policy]\nour_names = [\"mx.example.org\"]\nour_domains = [\"example.org\"]\n\
                        our_addrs = [\"198.51.100.25\", \"2001:db8:25::25\"]\n";

struct Measured {
    rate: f64,
    p50: Duration,
    p99: Duration,
    rows: usize,
}

fn measure(engine: &PolicyEngine, inputs: &[HeloInput], validations: usize) -> Measured {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut times = Vec::with_capacity(validations);
    let total = runtime.block_on(async {
        // Warm-up pass: fills the DNS cache when DNS is on.
        for input in inputs {
            std::hint::black_box(engine.evaluate(input).await);
        }
        let started = Instant::now();
        for input in inputs.iter().cycle().take(validations) {
            let one = Instant::now();
            std::hint::black_box(engine.evaluate(input).await);
            times.push(one.elapsed());
        }
        started.elapsed()
    });
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
    Measured {
        rate: validations as f64 / total.as_secs_f64(),
        p50: at(0.5),
        p99: at(0.99),
        rows: inputs.len(),
    }
}

fn figures(kind: &str, what: &str, m: &Measured, offline_rate: Option<f64>) -> Vec<Figure> {
    let mut rate = Figure::new(
        "policy",
        &format!("{kind}_rate"),
        &format!("validations/s on one core, {what}"),
        m.rate,
        "validations/s",
    );
    rate = match offline_rate {
        None => rate.goal(Goal::AtLeast(1_000_000.0)).reading(
            &format!("{} corpus rows in turn.", m.rows),
            "allocation per verdict (reasons, explanations) and the public-suffix lookup dominate.",
        ),
        Some(offline) => rate.against("DNS off", offline).reading(
            &format!(
                "{} corpus rows in turn; every answer from the cache.",
                m.rows
            ),
            "",
        ),
    };
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    vec![
        rate,
        Figure::new(
            "policy",
            &format!("{kind}_p50"),
            &format!("p50 per validation, {what}"),
            us(m.p50),
            "µs",
        )
        .reading("Median time of one evaluation.", ""),
        Figure::new(
            "policy",
            &format!("{kind}_p99"),
            &format!("p99 per validation, {what}"),
            us(m.p99),
            "µs",
        )
        .reading("Tail of one evaluation.", ""),
    ]
}

fn main() -> anyhow::Result<()> {
    let args = BenchArgs::from_env()?;
    let validations = if args.quick { 5_000 } else { 300_000 };
    let rows = xtask::corpus::corpus();

    let offline_engine =
        PolicyFile::parse(&format!("{IDENTITY}[dns]\nenabled = false\n"), "bench.toml")?
            .build_engine(None)?;
    let offline_inputs: Vec<HeloInput> = rows
        .iter()
        .filter(|row| !row.dns)
        .map(|row| HeloInput::new(row.helo.clone().into_bytes(), row.client))
        .collect();
    let offline = measure(&offline_engine, &offline_inputs, validations);

    let dns = xtask::dns_fixture::Dnsmasq::start(Some(3600), &[]);
    let dns_engine = PolicyFile::parse(
        &format!("{IDENTITY}[dns]\nservers = [\"{}\"]\n", dns.addr),
        "bench.toml",
    )?
    .build_engine(None)?;
    let all_inputs: Vec<HeloInput> = rows
        .iter()
        .map(|row| HeloInput::new(row.helo.clone().into_bytes(), row.client))
        .collect();
    let warm = measure(&dns_engine, &all_inputs, validations);

    let mut out = figures("offline", "DNS off", &offline, None);
    out.extend(figures(
        "warm_dns",
        "DNS checks from a warm cache",
        &warm,
        Some(offline.rate),
    ));
    for f in &out {
        println!("{:<55} {:>14.2} {}", f.name, f.value, f.unit);
    }
    args.write(&out)
}
