//! The helo-filter XDP program: finds the client side of SMTP flows, copies their first
//! command lines into a ring buffer for the daemon, and holds a flow's further payload
//! while its verdict is pending (the gate). Everything else returns XDP_PASS.
#![no_std]
#![no_main]

mod capture;
mod maps;
mod parse;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use helo_filter_common::Counter;

#[xdp]
pub fn helo_capture(ctx: XdpContext) -> u32 {
    maps::count(Counter::PacketsSeen);
    match parse::parse_tcp(&ctx) {
        Some(segment) => capture::on_tcp_segment(&ctx, &segment),
        None => xdp_action::XDP_PASS,
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
