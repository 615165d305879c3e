//! WASI's stdio, environment variables and exit, answered inside the
//! component.
//!
//! Rust's std for `wasm32-wasip2` links wasi-libc, whose stdio, environment
//! and exit support imports 19 WASI functions: the streams of stdin, stdout
//! and stderr, their terminals, `get-environment` and `exit`. Every import of
//! a component costs the host on each instantiation (a lowered function and
//! its trampolines), which is most of a fresh instance's set-up for a small
//! filter; yet the host grants filters nothing behind them: no stdin, stdout
//! and stderr that discard what is written, no environment variables
//! (`proxy/src/filters/host.rs`). So this module defines the functions
//! wasi-libc calls, with the same answers, and the linker takes these
//! definitions instead of importing. The component then imports the
//! `cascade:filter` functions it uses, the two pollable functions below, and
//! any other WASI it uses (clocks, random, `get-arguments`): 17 imports
//! fewer. One answer differs from the host's in its words: `exit` traps, so
//! the failure reads as a trap, not as an exit status.
//!
//! The names and signatures are wasi-libc's lowering of WASI 0.2.0
//! (`__wasm_import_<interface>_<function>`), and these are the functions its
//! stdio calls. Should a future wasi-libc name them otherwise, these
//! definitions go unused and the imports come back: the filter still works,
//! only its instantiation costs more (the test
//! `sdk_filters_import_no_wasi_stdio` in the proxy fails then).
//!
//! Every stream a filter can hold is one of these three: the host grants no
//! file (no preopened directory) and no socket (`wasi:sockets` is linked,
//! but the host refuses to create a socket, so none has a stream). Should
//! that change, a stream of the
//! host's reaching these functions traps instead of being answered wrongly;
//! a host that grants streams needs the feature off. `poll` on a stdio
//! stream traps too (the host's `poll` does not know `READY`). Pollables
//! are another matter: the host's clocks make real ones
//! (`std::thread::sleep` blocks on one), so `pollable.block` and the
//! pollable's drop go on to the host for every handle but `READY`. Those two
//! stay imports.

/// This module's handles sit above any the host can give out (the canonical
/// ABI caps a handle table at 2^28 entries), so they are told apart from
/// the host's; wasi-libc takes 0 for "none".
const STDIO_HANDLES: i32 = 1 << 30;
const STDIN: i32 = STDIO_HANDLES + 1;
const STDOUT: i32 = STDIO_HANDLES + 2;
const STDERR: i32 = STDIO_HANDLES + 3;
/// The pollable of a stdio stream: always ready.
const READY: i32 = STDIO_HANDLES + 4;
/// What `check-write` lets through at once (never 0, so wasi-libc never
/// waits on `READY`).
const WRITE_PERMIT: u64 = 1 << 20;

// The host's pollables, for the handles that are not this module's.
#[link(wasm_import_module = "wasi:io/poll@0.2.0")]
unsafe extern "C" {
    #[link_name = "[method]pollable.block"]
    fn host_pollable_block(pollable: i32);
    #[link_name = "[resource-drop]pollable"]
    fn host_pollable_drop(pollable: i32);
}

/// Stop at a handle these functions did not give out (see the module docs).
fn expect_stdio(stream: i32, ours: &[i32]) {
    if !ours.contains(&stream) {
        core::arch::wasm32::unreachable()
    }
}

/// A return area whose first byte is the case: `ok` of a `result`, `none`
/// of an `option`.
unsafe fn write_case_zero(ret: *mut u8) {
    unsafe { ret.write(0) }
}

/// `result<list<u8>, stream-error>`: `err`, and at offset 4 the error's case,
/// `closed`.
unsafe fn write_stream_closed(ret: *mut u8) {
    unsafe {
        ret.write(1);
        ret.add(4).write(1);
    }
}

/// Stand-ins for the host's functions; wasi-libc calls them by these names.
#[doc(hidden)]
pub mod stand_ins {
    use super::*;

    #[unsafe(no_mangle)]
    pub extern "C" fn __wasm_import_stdin_get_stdin() -> i32 {
        STDIN
    }
    #[unsafe(no_mangle)]
    pub extern "C" fn __wasm_import_stdout_get_stdout() -> i32 {
        STDOUT
    }
    #[unsafe(no_mangle)]
    pub extern "C" fn __wasm_import_stderr_get_stderr() -> i32 {
        STDERR
    }

    /// `option<terminal-*>`: none, no stream is a terminal.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn __wasm_import_terminal_stdin_get_terminal_stdin(ret: *mut u8) {
        unsafe { write_case_zero(ret) }
    }
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn __wasm_import_terminal_stdout_get_terminal_stdout(ret: *mut u8) {
        unsafe { write_case_zero(ret) }
    }
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn __wasm_import_terminal_stderr_get_terminal_stderr(ret: *mut u8) {
        unsafe { write_case_zero(ret) }
    }

    /// An empty `list<tuple<string, string>>`: pointer and length 0 (with
    /// length 0, wasi-libc reads and frees nothing).
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn __wasm_import_environment_get_environment(ret: *mut u32) {
        unsafe { ret.cast::<[u32; 2]>().write([0, 0]) }
    }

    /// The host ends the call on `exit` too: the request fails.
    #[unsafe(no_mangle)]
    pub extern "C" fn __wasm_import_exit_exit(_status: i32) {
        core::arch::wasm32::unreachable()
    }

    /// stdout and stderr take everything and keep nothing. (`result<u64,
    /// stream-error>`: the value at offset 8.)
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn __wasm_import_streams_method_output_stream_check_write(stream: i32, ret: *mut u8) {
        expect_stdio(stream, &[STDOUT, STDERR]);
        unsafe {
            write_case_zero(ret);
            ret.add(8).cast::<u64>().write(WRITE_PERMIT);
        }
    }
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn __wasm_import_streams_method_output_stream_write(
        stream: i32,
        _bytes: *const u8,
        _len: usize,
        ret: *mut u8,
    ) {
        expect_stdio(stream, &[STDOUT, STDERR]);
        unsafe { write_case_zero(ret) }
    }
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn __wasm_import_streams_method_output_stream_blocking_flush(stream: i32, ret: *mut u8) {
        expect_stdio(stream, &[STDOUT, STDERR]);
        unsafe { write_case_zero(ret) }
    }
    #[unsafe(no_mangle)]
    pub extern "C" fn __wasm_import_streams_method_output_stream_subscribe(stream: i32) -> i32 {
        expect_stdio(stream, &[STDOUT, STDERR]);
        READY
    }

    /// stdin is closed: every read ends the stream.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn __wasm_import_streams_method_input_stream_blocking_read(
        stream: i32,
        _len: i64,
        ret: *mut u8,
    ) {
        expect_stdio(stream, &[STDIN]);
        unsafe { write_stream_closed(ret) }
    }
    #[unsafe(no_mangle)]
    pub extern "C" fn __wasm_import_streams_method_input_stream_subscribe(stream: i32) -> i32 {
        expect_stdio(stream, &[STDIN]);
        READY
    }

    /// `READY` is ready; any other pollable is the host's (a clock's).
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn __wasm_import_poll_method_pollable_block(pollable: i32) {
        if pollable != READY {
            unsafe { host_pollable_block(pollable) }
        }
    }
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn __wasm_import_poll_pollable_drop(pollable: i32) {
        if pollable != READY {
            unsafe { host_pollable_drop(pollable) }
        }
    }

    /// Nothing behind the handle to let go of.
    #[unsafe(no_mangle)]
    pub extern "C" fn __wasm_import_streams_input_stream_drop(stream: i32) {
        expect_stdio(stream, &[STDIN]);
    }
    #[unsafe(no_mangle)]
    pub extern "C" fn __wasm_import_streams_output_stream_drop(stream: i32) {
        expect_stdio(stream, &[STDOUT, STDERR]);
    }
    /// Errors come only from streams, and these streams never fail.
    #[unsafe(no_mangle)]
    pub extern "C" fn __wasm_import_io_error_error_drop(_error: i32) {
        core::arch::wasm32::unreachable()
    }
    /// No terminal is ever handed out.
    #[unsafe(no_mangle)]
    pub extern "C" fn __wasm_import_terminal_input_terminal_input_drop(_terminal: i32) {
        core::arch::wasm32::unreachable()
    }
    #[unsafe(no_mangle)]
    pub extern "C" fn __wasm_import_terminal_output_terminal_output_drop(_terminal: i32) {
        core::arch::wasm32::unreachable()
    }
}
