//! graydar's eBPF programs, one file per signal. Loaded by graydar-agent.
#![no_std]
#![no_main]
// Atomic adds on map values shared between CPUs (ebpf/src/incast.rs): core has
// no AtomicU64::fetch_add for the BPF target.
#![feature(core_intrinsics)]
#![expect(
    internal_features,
    reason = "core_intrinsics is the only atomic add core offers the BPF target"
)]

mod disk;
mod drops;
mod floor;
mod incast;
mod util;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
