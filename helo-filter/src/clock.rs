//! The two clocks the daemon keeps time with: Unix time for what outlives a reboot (state
//! files, the operator's expiries), the kernel's boot clock for what the BPF programs compare
//! against (denial expiries, the heartbeat, capture timestamps).

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch (what the files store: they outlive reboots).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Now on the clock the kernel program reads (`bpf_ktime_get_boot_ns`), in nanoseconds.
pub fn boot_time_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
