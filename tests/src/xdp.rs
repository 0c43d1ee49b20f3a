//! The capture program, loaded from the object the daemon embeds, run on crafted frames.

use aya::{
    Ebpf,
    maps::{HashMap, MapData, RingBuf},
    programs::{SchedClassifier, TestRun as _, TestRunOptions, TestRunResult, Xdp},
};
use helo_filter::{
    clock::boot_time_ns,
    kernel::{self, CounterReader, Heartbeat, lists::KernelLists},
    pipeline::capture::decode,
};
use helo_filter_common::{
    CaptureEvent, Counter, FlowKey, FlowState, KernelConfig, known_good_key, maps, phase, programs,
};

/// `XDP_DROP`, `XDP_PASS` and `XDP_TX` from the kernel's UAPI (`enum xdp_action`).
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

pub struct CaptureProgram {
    ebpf: Ebpf,
    events: RingBuf<MapData>,
    counters: CounterReader,
    heartbeat: Heartbeat,
    flows: HashMap<MapData, FlowKey, FlowState>,
    lists: KernelLists,
}

impl CaptureProgram {
    pub fn load(config: &KernelConfig) -> Self {
        crate::require_root();
        let mut ebpf = kernel::load(config, maps::EVENTS_DEFAULT_BYTES, None)
            .expect("loading the capture program");
        let events = RingBuf::try_from(ebpf.take_map(maps::EVENTS).expect("EVENTS map"))
            .expect("EVENTS is a ring buffer");
        let counters = CounterReader::new(&mut ebpf).expect("COUNTERS map");
        let heartbeat = Heartbeat::new(&mut ebpf).expect("HEARTBEAT map");
        let flows = HashMap::try_from(ebpf.take_map(maps::FLOWS).expect("FLOWS map"))
            .expect("FLOWS is a hash map");
        let lists = KernelLists::new(&mut ebpf).expect("ALLOW and DENY maps");
        CaptureProgram {
            ebpf,
            events,
            counters,
            heartbeat,
            flows,
            lists,
        }
    }

    pub fn run(&mut self, frame: &[u8], repeat: u32) -> TestRunResult {
        test_run(
            kernel::capture_program(&mut self.ebpf).expect("capture program"),
            frame,
            repeat,
        )
    }

    /// Every event the program has written since the last drain.
    pub fn drain(&mut self) -> Vec<CaptureEvent> {
        let mut events = Vec::new();
        while let Some(record) = self.events.next() {
            events.push(decode(&record).expect("a whole capture event"));
        }
        events
    }

    /// Writes the daemon's heartbeat as of `ago_ms` milliseconds ago (0: now).
    pub fn heartbeat(&mut self, ago_ms: u64) {
        let at = boot_time_ns() - ago_ms * 1_000_000;
        self.heartbeat.beat_at(at).expect("writing the heartbeat");
    }

    /// What the daemon does once a flow is judged: the gate opens.
    pub fn judge(&mut self, key: &FlowKey) {
        self.set_phase(key, phase::DONE);
    }

    /// Writes a verdict phase (`phase::CONDEMNED_RST`, …) for the flow, as the daemon does.
    pub fn set_phase(&mut self, key: &FlowKey, to: u8) {
        let mut state = self.flows.get(key, 0).expect("the flow is tracked");
        state.phase = to;
        self.flows
            .insert(key, state, 0)
            .expect("writing the verdict");
    }

    /// Puts a flow into `FLOWS` in `phase` without its packets (a flow the program tracked
    /// under an earlier configuration, say).
    pub fn track(&mut self, key: &FlowKey, phase: u8) {
        let state = FlowState {
            phase,
            ..FlowState::default()
        };
        self.flows
            .insert(key, state, 0)
            .expect("writing a flow entry");
    }

    /// The flow's phase in `FLOWS` (None: the kernel does not track it).
    pub fn phase(&self, key: &FlowKey) -> Option<u8> {
        self.flows.get(key, 0).ok().map(|state| state.phase)
    }

    /// Runs the TC egress classifier (`helo_egress`, which shares this object's maps) once on
    /// `frame` and returns its TC action. BPF_PROG_TEST_RUN hands a TC program the frame from
    /// its Ethernet header on, as the egress hook does. The classifier is loaded on first use.
    pub fn run_egress(&mut self, frame: &[u8]) -> u32 {
        self.run_egress_marked(frame, 0)
    }

    /// [`Self::run_egress`] on a packet whose socket mark (`skb->mark`, set with `SO_MARK`)
    /// is `mark`: the test run takes it from the `__sk_buff` context passed in, whose first
    /// eight bytes (`len`, `pkt_type`) must be zero.
    pub fn run_egress_marked(&mut self, frame: &[u8], mark: u32) -> u32 {
        self.run_egress_repeated(frame, mark, 1).return_value
    }

    /// [`Self::run_egress_marked`] `repeat` times (for benchmarks).
    pub fn run_egress_repeated(&mut self, frame: &[u8], mark: u32, repeat: u32) -> TestRunResult {
        let program: &mut SchedClassifier = self
            .ebpf
            .program_mut(programs::EGRESS)
            .expect("the egress program is in the object")
            .try_into()
            .expect("the egress program is a TC classifier");
        if program.fd().is_err() {
            program
                .load()
                .expect("the kernel verifier accepts the egress program");
        }
        tc_test_run(program, frame, mark, repeat)
    }

    /// Makes the source of `key` known-good for `for_ms` milliseconds from now (negative:
    /// already over).
    pub fn known_good(&mut self, key: &FlowKey, for_ms: i64) {
        let mut known: HashMap<&mut MapData, [u8; 16], u64> =
            HashMap::try_from(self.ebpf.map_mut(maps::KNOWN_GOOD).expect("KNOWN_GOOD map"))
                .expect("KNOWN_GOOD is a hash map");
        let until = boot_time_ns().saturating_add_signed(for_ms * 1_000_000);
        known
            .insert(known_good_key(key.family, &key.saddr), until, 0)
            .expect("writing the known-good map");
    }

    /// Allows `net`.
    pub fn allow(&mut self, net: ipnet::IpNet) {
        self.lists.allow(net).expect("writing the allow map");
    }

    /// Denies `net` (operator entry, no expiry).
    pub fn deny(&mut self, net: ipnet::IpNet) {
        self.lists
            .deny(net, None, helo_filter_common::origin::OPERATOR)
            .expect("writing the deny map");
    }

    /// Runs the frame once and returns the action and the frame as the program left it.
    pub fn run_out(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        let program = kernel::capture_program(&mut self.ebpf).expect("capture program");
        let mut out = vec![0u8; frame.len() + 256];
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                repeat: 1,
                ..TestRunOptions::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(result.data_size_out as usize);
        (result.return_value, out)
    }

    pub fn counter(&self, counter: Counter) -> u64 {
        self.counters.read(counter).expect("reading a counter")
    }
}

/// The program that only returns XDP_PASS: the per-packet baseline.
pub struct BaselineProgram {
    ebpf: Ebpf,
}

impl BaselineProgram {
    pub fn load() -> Self {
        crate::require_root();
        BaselineProgram {
            ebpf: kernel::load_baseline().expect("loading the baseline program"),
        }
    }

    pub fn run(&mut self, frame: &[u8], repeat: u32) -> TestRunResult {
        test_run(
            kernel::baseline_program(&mut self.ebpf).expect("baseline program"),
            frame,
            repeat,
        )
    }

    /// The TC baseline, which only returns TC_ACT_OK.
    pub fn run_tc(&mut self, frame: &[u8], repeat: u32) -> TestRunResult {
        tc_test_run(
            kernel::baseline_classifier(&mut self.ebpf).expect("TC baseline program"),
            frame,
            0,
            repeat,
        )
    }
}

/// BPF_PROG_TEST_RUN of a TC program on `frame`, its socket mark (`skb->mark`) `mark`: the
/// test run takes it from the `__sk_buff` context passed in, whose first eight bytes
/// (`len`, `pkt_type`) must be zero.
fn tc_test_run(program: &SchedClassifier, frame: &[u8], mark: u32, repeat: u32) -> TestRunResult {
    let mut context = [0u8; 12];
    context[8..].copy_from_slice(&mark.to_ne_bytes());
    program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&context),
            repeat,
            ..TestRunOptions::default()
        })
        .unwrap_or_else(|e| {
            panic!(
                "BPF_PROG_TEST_RUN (TC) on a {}-byte frame: {e:?}",
                frame.len()
            )
        })
}

fn test_run(program: &Xdp, frame: &[u8], repeat: u32) -> TestRunResult {
    program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::default()
        })
        .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN on a {}-byte frame: {e}", frame.len()))
}
