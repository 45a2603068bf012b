//! The built-in guest program and its memory layout.
//!
//! 32-bit protected mode, flat 4 GiB code and data segments, paging off. Every vCPU
//! runs [`PROGRAM`] from [`CODE_ADDR`] with `EBP` = [`param_addr`]`(vcpu)`; the VMM
//! fills the parameter block before the first `KVM_RUN`:
//!
//! | offset | field | written by |
//! |---|---|---|
//! | `+0`  | iterations | VMM |
//! | `+4`  | compute loop length | VMM |
//! | `+8`  | port I/O writes per iteration | VMM |
//! | `+12` | MMIO writes per iteration | VMM |
//! | `+16` | hypercalls per iteration | VMM |
//! | `+20` | guest events per iteration | VMM |
//! | `+24` | vCPU index | VMM |
//! | `+28` | sum of hypercall return values (starts at 0) | guest |
//! | `+32` | iterations remaining | guest |
//! | `+36` | inner loop index `j` | guest |
//!
//! One iteration, with `r` = iterations remaining (counts down from `iterations` to 1):
//! 1. compute: `EDI = 5 * EDI + 1` (wrapping), `compute` times (`EDI` starts at 0 and
//!    is never reset);
//! 2. `io` times `out DATA_PORT, al` with `AL` = low byte of `r`;
//! 3. `mmio` times a 4-byte write of `r` to [`MMIO_ADDR`];
//! 4. for `j` in `0..hypercalls`: hypercall number `j & 3`, args
//!    `[j + 0x41, vcpu, r, EDI]`; the return value (low 32 bits) is added to `+28`;
//! 5. for `k` in `0..events`: guest event id `k`, value `(vcpu << 32) | r`.
//!
//! Then `out DONE_PORT, eax` with `EAX` = the `+28` sum, and `hlt` forever.

/// Guest-physical address the program is loaded at (and the initial `EIP`).
pub const CODE_ADDR: u64 = 0x1000;
/// Guest-physical address of vCPU 0's page (parameter block at its start, stack at its top).
pub const VCPU_PAGES_ADDR: u64 = 0x1_0000;
/// Size of each vCPU's page.
pub const VCPU_PAGE_SIZE: u64 = 0x1000;
/// Size of the parameter block at the start of each vCPU page.
pub const PARAM_SIZE: usize = 40;
/// Plain "console/data" port written by the workload (`out dx, al`).
pub const DATA_PORT: u16 = 0x400;
/// Hypercall port (`out dx, eax`, `EAX` = number).
pub const HYPERCALL_PORT: u16 = 0x500;
/// Guest-event port (`out dx, eax`, `EAX` = id, `ECX:EBX` = value).
pub const GUEST_EVENT_PORT: u16 = 0x501;
/// "Done" port: the guest finished its iterations; `EAX` = hypercall return sum.
pub const DONE_PORT: u16 = 0x502;
/// Unbacked guest-physical address the MMIO writes go to.
pub const MMIO_ADDR: u64 = 0xd000_0000;

/// Guest-physical address of `vcpu`'s parameter block (its `EBP`).
pub const fn param_addr(vcpu: u32) -> u64 {
    VCPU_PAGES_ADDR + vcpu as u64 * VCPU_PAGE_SIZE
}

/// Initial `ESP` of `vcpu`: the top of its page.
pub const fn stack_top(vcpu: u32) -> u64 {
    param_addr(vcpu) + VCPU_PAGE_SIZE
}

/// Guest memory needed for `vcpus` vCPUs (at least 1 MiB).
pub const fn memory_size(vcpus: u32) -> u64 {
    let need = param_addr(vcpus);
    if need < 0x10_0000 {
        0x10_0000
    } else {
        need
    }
}

/// The guest program. Assembled with GNU as (`--32`, Intel syntax) and checked with
/// `objdump -D -b binary -m i386 -M intel`; offsets are from [`CODE_ADDR`].
#[rustfmt::skip]
pub const PROGRAM: &[u8] = &[
    // start:                                 EBP = parameter block (set by the VMM)
    0x31, 0xff,                         // 00: xor  edi, edi                compute accumulator
    0x8b, 0x45, 0x00,                   // 02: mov  eax, [ebp+0x00]         iterations
    0x89, 0x45, 0x20,                   // 05: mov  [ebp+0x20], eax         remaining = iterations
    0x85, 0xc0,                         // 08: test eax, eax
    0x74, 0x75,                         // 0a: jz   done (0x81)
    // iter:
    0x8b, 0x4d, 0x04,                   // 0c: mov  ecx, [ebp+0x04]         compute loop length
    0xe3, 0x06,                         // 0f: jecxz 0x17
    0x8d, 0x7c, 0xbf, 0x01,             // 11: lea  edi, [edi+edi*4+1]      edi = 5*edi + 1
    0xe2, 0xfa,                         // 15: loop 0x11
    0x8b, 0x4d, 0x08,                   // 17: mov  ecx, [ebp+0x08]         port I/O writes
    0xe3, 0x0a,                         // 1a: jecxz 0x26
    0x8a, 0x45, 0x20,                   // 1c: mov  al, [ebp+0x20]          low byte of remaining
    0x66, 0xba, 0x00, 0x04,             // 1f: mov  dx, 0x400               DATA_PORT
    0xee,                               // 23: out  dx, al
    0xe2, 0xfd,                         // 24: loop 0x23
    0x8b, 0x4d, 0x0c,                   // 26: mov  ecx, [ebp+0x0c]         MMIO writes
    0xe3, 0x0a,                         // 29: jecxz 0x35
    0x8b, 0x45, 0x20,                   // 2b: mov  eax, [ebp+0x20]         remaining
    0xa3, 0x00, 0x00, 0x00, 0xd0,       // 2e: mov  ds:[0xd0000000], eax    MMIO_ADDR
    0xe2, 0xf9,                         // 33: loop 0x2e
    0xc7, 0x45, 0x24, 0, 0, 0, 0,       // 35: mov  dword [ebp+0x24], 0     j = 0
    // hc_loop:
    0x8b, 0x45, 0x24,                   // 3c: mov  eax, [ebp+0x24]         j
    0x3b, 0x45, 0x10,                   // 3f: cmp  eax, [ebp+0x10]         hypercalls
    0x73, 0x19,                         // 42: jae  hc_done (0x5d)
    0x8d, 0x58, 0x41,                   // 44: lea  ebx, [eax+0x41]         arg0 = j + 'A'
    0x83, 0xe0, 0x03,                   // 47: and  eax, 3                  nr = j & 3
    0x8b, 0x4d, 0x18,                   // 4a: mov  ecx, [ebp+0x18]         arg1 = vcpu
    0x8b, 0x75, 0x20,                   // 4d: mov  esi, [ebp+0x20]         arg2 = remaining
    //                                                                      arg3 = edi
    0x66, 0xba, 0x00, 0x05,             // 50: mov  dx, 0x500               HYPERCALL_PORT
    0xef,                               // 54: out  dx, eax                 -> eax = return value
    0x01, 0x45, 0x1c,                   // 55: add  [ebp+0x1c], eax         sum += ret
    0xff, 0x45, 0x24,                   // 58: inc  dword [ebp+0x24]        j++
    0xeb, 0xdf,                         // 5b: jmp  hc_loop (0x3c)
    // hc_done:
    0xc7, 0x45, 0x24, 0, 0, 0, 0,       // 5d: mov  dword [ebp+0x24], 0     k = 0
    // ev_loop:
    0x8b, 0x45, 0x24,                   // 64: mov  eax, [ebp+0x24]         id = k
    0x3b, 0x45, 0x14,                   // 67: cmp  eax, [ebp+0x14]         guest events
    0x73, 0x10,                         // 6a: jae  ev_done (0x7c)
    0x8b, 0x5d, 0x20,                   // 6c: mov  ebx, [ebp+0x20]         value low = remaining
    0x8b, 0x4d, 0x18,                   // 6f: mov  ecx, [ebp+0x18]         value high = vcpu
    0x66, 0xba, 0x01, 0x05,             // 72: mov  dx, 0x501               GUEST_EVENT_PORT
    0xef,                               // 76: out  dx, eax
    0xff, 0x45, 0x24,                   // 77: inc  dword [ebp+0x24]        k++
    0xeb, 0xe8,                         // 7a: jmp  ev_loop (0x64)
    // ev_done:
    0xff, 0x4d, 0x20,                   // 7c: dec  dword [ebp+0x20]        remaining--
    0x75, 0x8b,                         // 7f: jnz  iter (0x0c)
    // done:
    0x8b, 0x45, 0x1c,                   // 81: mov  eax, [ebp+0x1c]         hypercall return sum
    0x66, 0xba, 0x02, 0x05,             // 84: mov  dx, 0x502               DONE_PORT
    0xef,                               // 88: out  dx, eax
    // halt:
    0xf4,                               // 89: hlt
    0xeb, 0xfd,                         // 8a: jmp  halt (0x89)
];

/// Parameter block contents for one vCPU (little-endian `u32`s, see the module docs).
pub(crate) fn param_block(vcpu: u32, iterations: u32, w: &crate::Workload) -> [u8; PARAM_SIZE] {
    let words = [iterations, w.compute_loop, w.io_writes, w.mmio_writes, w.hypercalls, w.guest_events, vcpu, 0, 0, 0];
    let mut out = [0u8; PARAM_SIZE];
    for (chunk, word) in out.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        assert_eq!(PROGRAM.len(), 0x8c);
        assert!(CODE_ADDR + PROGRAM.len() as u64 <= VCPU_PAGES_ADDR);
        assert_eq!(param_addr(2), 0x1_2000);
        assert_eq!(stack_top(0), 0x1_1000);
        assert_eq!(memory_size(1), 0x10_0000);
        assert_eq!(memory_size(1000), param_addr(1000));
        // the encoded port and MMIO constants match the ones the VMM dispatches on
        assert_eq!(&PROGRAM[0x21..0x23], &DATA_PORT.to_le_bytes());
        assert_eq!(&PROGRAM[0x2f..0x33], &(MMIO_ADDR as u32).to_le_bytes());
        assert_eq!(&PROGRAM[0x52..0x54], &HYPERCALL_PORT.to_le_bytes());
        assert_eq!(&PROGRAM[0x74..0x76], &GUEST_EVENT_PORT.to_le_bytes());
        assert_eq!(&PROGRAM[0x86..0x88], &DONE_PORT.to_le_bytes());
    }
}
