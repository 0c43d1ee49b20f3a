//! A quick figure for the policy engine: validations per second on one core over the
//! corpus's offline rows, DNS off, with p50/p99 per validation. (The benchmark issue adds
//! the warm-DNS-cache figure and the side-by-side report.)

use std::time::{Duration, Instant};

use helo_filter::{policy::HeloInput, policy_config::PolicyFile};

const VALIDATIONS: usize = 300_000;

fn main() {
    let config = "[policy]\nour_names = [\"mx.example.org\"]\nour_domains = [\"example.org\"]\n\
                  our_addrs = [\"198.51.100.25\", \"2001:db8:25::25\"]\n[dns]\nenabled = false\n";
    let engine = PolicyFile::parse(config, "bench.toml")
        .expect("bench config")
        .build_engine(None)
        .expect("engine");
    let inputs: Vec<HeloInput> = xtask::corpus::corpus()
        .into_iter()
        .filter(|row| !row.dns)
        .map(|row| HeloInput::new(row.helo.into_bytes(), row.client))
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut times = Vec::with_capacity(VALIDATIONS);
    let started = Instant::now();
    runtime.block_on(async {
        for input in inputs.iter().cycle().take(VALIDATIONS) {
            let one = Instant::now();
            std::hint::black_box(engine.evaluate(input).await);
            times.push(one.elapsed());
        }
    });
    let total = started.elapsed();
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "policy engine, DNS off, one core: {VALIDATIONS} validations over {} corpus rows in {:.2} s \
         = {:.0} validations/s; p50 {:.2} µs, p99 {:.2} µs",
        inputs.len(),
        total.as_secs_f64(),
        VALIDATIONS as f64 / total.as_secs_f64(),
        us(at(0.5)),
        us(at(0.99)),
    );
}
