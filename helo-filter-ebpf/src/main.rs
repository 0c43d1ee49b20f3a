//! The helo-filter XDP program: finds the client side of SMTP flows, copies their first
//! command lines into a ring buffer for the daemon, holds a flow's further payload while
//! its verdict is pending (the gate), drops SYNs from denied sources and the packets of
//! condemned flows. Everything else returns XDP_PASS. A TC egress classifier completes the
//! `drop` action on an MX.
#![no_std]
#![no_main]

mod capture;
mod maps;
mod parse;
mod report;
mod rst;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use helo_filter_common::{Counter, FlowKey, REPLY_MARK, phase, tcp_flags};

#[xdp]
pub fn helo_capture(ctx: XdpContext) -> u32 {
    maps::count(Counter::PacketsSeen);
    // A frame not to an SMTP port, most of what the NIC receives, is told apart from its
    // headers alone: no scratch slot, no flow lookup.
    let Some(at) = parse::locate_tcp(&ctx) else {
        return xdp_action::XDP_PASS;
    };
    let Some(config) = maps::config() else {
        return xdp_action::XDP_PASS;
    };
    if !maps::is_smtp_port(config, at.dport) {
        return xdp_action::XDP_PASS;
    }
    let Some(segment) = maps::SEGMENTS.get_ptr_mut(maps::SLOT_XDP) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: this CPU's scratch slot, used by nothing else while the program runs.
    let segment = unsafe { &mut *segment };
    if !parse::parse_tcp(&ctx, &at, segment) {
        return xdp_action::XDP_PASS;
    }
    match capture::on_tcp_segment(&ctx, segment, config) {
        rst::ANSWER_WITH_RST => rst::reply_with_rst(&ctx, segment),
        action => action,
    }
}

/// TC egress on the MTA's interface (actions `drop` and `reply`): with `drop` the MTA's
/// packets to a condemned client, the RST that destroying its socket sends above all, never
/// leave, so the client gets silence; with `reply` that RST does not, so the client reads
/// the daemon's answer instead of a reset.
#[classifier]
pub fn helo_egress(ctx: TcContext) -> i32 {
    let Some(at) = parse::locate_tcp(&ctx) else {
        return TC_ACT_OK;
    };
    match maps::config() {
        // Under `reply` only a RST can be kept back: the MTA's other packets leave without
        // a flow lookup.
        Some(config)
            if maps::is_smtp_port(config, at.sport)
                && (config.drop_mta_packets() || at.flags & tcp_flags::RST != 0) => {}
        _ => return TC_ACT_OK,
    }
    let Some(segment) = maps::SEGMENTS.get_ptr_mut(maps::SLOT_TC) else {
        return TC_ACT_OK;
    };
    // SAFETY: this CPU's egress scratch slot.
    let segment = unsafe { &mut *segment };
    if !parse::parse_tcp(&ctx, &at, segment) {
        return TC_ACT_OK;
    }
    // The flow as the client sent it.
    let client_flow = FlowKey {
        saddr: segment.key.daddr,
        daddr: segment.key.saddr,
        sport: segment.key.dport,
        dport: segment.key.sport,
        family: segment.key.family,
        _pad: [0; 3],
    };
    // SAFETY: map values are read as plain data.
    match unsafe { maps::FLOWS.get(client_flow) } {
        Some(state) if state.phase == phase::CONDEMNED => {
            maps::count(Counter::CondemnedDropped);
            TC_ACT_SHOT
        }
        // Only the RST of the destroyed socket is kept back: the MTA's reply to the HELO
        // must reach the client (it then sends the command the daemon answers), and the
        // daemon's answers are marked. The RST is reported: if the MTA had not answered
        // the HELO yet, the daemon answers it.
        Some(state)
            if state.phase == phase::CONDEMNED_REPLY
                && segment.flags & tcp_flags::RST != 0
                // SAFETY: the program's own __sk_buff, readable for this run.
                && unsafe { (*ctx.skb.skb).mark } != REPLY_MARK =>
        {
            report::mta_reset(&ctx, segment, client_flow, state.stream_start_seq);
            maps::count(Counter::CondemnedDropped);
            TC_ACT_SHOT
        }
        _ => TC_ACT_OK,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
