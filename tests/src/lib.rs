//! Shared pieces of the privileged tests: a frame builder and a handle on the real
//! compiled XDP program run through BPF_PROG_TEST_RUN.
pub mod e2e;
pub mod packet;
pub mod policy_client;
pub mod xdp;

/// The privileged tests load BPF programs and create namespaces: they need root. They
/// fail (never skip) without it.
pub fn require_root() {
    // SAFETY: geteuid(2) takes no arguments, touches no memory of ours and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "these tests load XDP programs and create network namespaces: run them as root \
         (cargo xtask test)"
    );
}
