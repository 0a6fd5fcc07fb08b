// CRC32C (Castagnoli, polynomial 0x1EDC6F41, reflected 0x82F63B78), as iSCSI (RFC 3720) and
// ext4/btrfs define it: the register starts at ~0 and the result is complemented.
//
//   crc32c_portable  slicing-by-8 tables, any CPU (the reference the hardware path is tested against)
//   crc32c_sse42     the SSE4.2 crc32 instruction over three interleaved streams (x86/crc32c_sse42.cpp),
//                    combined with the zeros operator below
//   crc32c_avx512    AVX-512 VPCLMULQDQ folding of 256 bytes per step (x86/crc32c_avx512.cpp), the last
//                    64 bytes of the folded remainder finished with crc32
//   crc32c           the best of those this CPU has, chosen once
//
// Every function extends: crc32c(crc32c(0, a), b) == crc32c(0, a || b).
#pragma once

#include <cstddef>
#include <cstdint>

namespace nlm {

uint32_t crc32c_portable(uint32_t crc, const uint8_t* data, size_t n);
uint32_t crc32c(uint32_t crc, const uint8_t* data, size_t n);
// crc32c over n_threads contiguous spans at once (OpenMP; the spans joined with the zeros operator):
// a buffer larger than the caches is read at the bandwidth of all threads, not of one.
uint32_t crc32c_parallel(uint32_t crc, const uint8_t* data, size_t n, int n_threads);
// The implementation crc32c uses: "avx512", "sse4.2" or "portable".
const char* crc32c_impl();

// The raw register after `bytes` zero bytes more, for a fixed `bytes` (a linear map over GF(2)^32,
// applied as four table lookups): what lets independent streams be joined.
struct Crc32cShift {
    uint32_t table[4][256];
    explicit Crc32cShift(size_t bytes);
    uint32_t operator()(uint32_t raw) const {
        return table[0][raw & 0xff] ^ table[1][(raw >> 8) & 0xff] ^ table[2][(raw >> 16) & 0xff] ^
               table[3][raw >> 24];
    }
};

#if defined(NLM_HAVE_X86_KERNELS)
uint32_t crc32c_sse42(uint32_t crc, const uint8_t* data, size_t n);
uint32_t crc32c_avx512(uint32_t crc, const uint8_t* data, size_t n);
#endif

// x^e mod P (the unreflected polynomial), bit-reflected into 32 bits: a folding constant.
uint32_t crc32c_xpow_reflected(unsigned e);

}  // namespace nlm
