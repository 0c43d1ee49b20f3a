//! Delivering a frame up the network stack as though an interface had received it: the
//! pass-through XDP program (the benchmarks' baseline, which only returns XDP_PASS) run
//! with `BPF_PROG_RUN`'s live frames (`BPF_F_TEST_XDP_LIVE_FRAMES`, Linux 5.18), where
//! XDP_PASS hands the frame to the interface's receive path. The daemon re-injects held
//! segments this way (see `pipeline::reinject`).

use anyhow::Context as _;
use aya::{
    Ebpf,
    programs::{TestRun as _, TestRunAttrs, TestRunOptions, Xdp},
};
use helo_filter_common::programs;

use super::{BASELINE_OBJECT, check_object};

/// The loaded pass-through program.
pub struct PassThrough {
    ebpf: Ebpf,
}

impl PassThrough {
    pub fn load() -> anyhow::Result<PassThrough> {
        check_object(BASELINE_OBJECT)?;
        let mut ebpf = Ebpf::load(BASELINE_OBJECT).context("loading the pass-through object")?;
        super::baseline_program(&mut ebpf)?
            .load()
            .context("loading the pass-through program")?;
        Ok(PassThrough { ebpf })
    }

    /// Hands `frame` (Ethernet header first) to the receive path of interface `ifindex`,
    /// in this thread's network namespace, once.
    pub fn deliver(&self, frame: &[u8], ifindex: u32) -> anyhow::Result<()> {
        let program: &Xdp = self
            .ebpf
            .program(programs::BASELINE_PASS)
            .context("the pass-through program is missing")?
            .try_into()?;
        let context = xdp_md(frame.len() as u32, ifindex);
        // With live frames the kernel reports no return value (each frame's action is
        // carried out instead): success means the frame was run and passed on.
        program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                ctx_in: Some(&context),
                repeat: 1,
                attrs: TestRunAttrs::new().xdp_live_frames(1),
                ..TestRunOptions::default()
            })
            .context("BPF_PROG_RUN with live frames")?;
        Ok(())
    }
}

/// The `struct xdp_md` of a live frame of `len` bytes received on `ifindex`'s first queue:
/// data at 0 (no metadata), data_end at `len`, no egress interface.
fn xdp_md(len: u32, ifindex: u32) -> [u8; 24] {
    let fields = [0, len, 0, ifindex, 0, 0];
    let mut bytes = [0u8; 24];
    for (chunk, field) in bytes.chunks_exact_mut(4).zip(fields) {
        chunk.copy_from_slice(&field.to_ne_bytes());
    }
    bytes
}
