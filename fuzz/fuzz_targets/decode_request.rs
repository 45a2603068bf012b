//! libFuzzer target: any bytes a peer sends to a host's control socket.
//! `cargo fuzz run decode_request` (see ../README.md).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hvtrace_fuzz::decode_request_input(data));
