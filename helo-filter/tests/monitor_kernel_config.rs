//! Monitor mode holds nothing: the kernel configuration it writes turns the gate off, while
//! an enforcing configuration keeps its deadline.

use helo_filter::config::PolicyFile;
use helo_filter_common::KernelConfig;

fn kernel(text: &str) -> KernelConfig {
    PolicyFile::parse(text, "t.toml")
        .expect("a valid file")
        .kernel_config()
}

#[test]
fn monitor_mode_turns_the_kernel_gate_off() {
    let enforcing = kernel("[enforce]\ngate_deadline_ms = 800\n");
    assert_eq!(enforcing.gate_deadline_ms, 800);
    assert!(enforcing.gate_on());

    let monitoring = kernel("[enforce]\nmonitor = true\ngate_deadline_ms = 800\n");
    assert_eq!(monitoring.gate_deadline_ms, KernelConfig::NO_GATE);
    assert!(!monitoring.gate_on());
    // Held segments are not reported either (nothing is held); nothing else changes: the
    // same ports and heartbeat timeout, so capture goes on.
    assert_eq!(enforcing.options, KernelConfig::REPORT_HELD);
    assert_eq!(monitoring.options, 0);
    assert_eq!(
        KernelConfig {
            gate_deadline_ms: enforcing.gate_deadline_ms,
            options: enforcing.options,
            ..monitoring
        },
        enforcing
    );
}
