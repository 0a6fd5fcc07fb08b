// CRC32C with the SSE4.2 crc32 instruction. One crc32 has a latency of 3 cycles and a throughput of
// one per cycle, so three independent streams keep the unit busy: each of three consecutive spans
// of a chunk is summed from a zero register, and the three registers are joined with the zeros
// operator (Crc32cShift), which is linear: raw(a || b) = shift_|b|(raw(a)) ^ raw_from_0(b).
#include <nmmintrin.h>

#include <cstring>

#include "kv/crc32c.h"

namespace nlm {
namespace {

constexpr size_t kLong = 8192;  // bytes per stream in a long chunk
constexpr size_t kShort = 256;

inline uint64_t load64(const uint8_t* p) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    return w;
}

// Three streams of `span` bytes each from p; returns the joined raw register.
template <size_t span>
inline uint64_t three_streams(uint64_t c0, const uint8_t* p, const Crc32cShift& shift) {
    uint64_t c1 = 0, c2 = 0;
    for (size_t i = 0; i < span; i += 8) {
        c0 = _mm_crc32_u64(c0, load64(p + i));
        c1 = _mm_crc32_u64(c1, load64(p + span + i));
        c2 = _mm_crc32_u64(c2, load64(p + 2 * span + i));
    }
    return uint64_t(shift(shift(uint32_t(c0)) ^ uint32_t(c1)) ^ uint32_t(c2));
}

}  // namespace

uint32_t crc32c_sse42(uint32_t crc, const uint8_t* p, size_t n) {
    static const Crc32cShift long_shift(kLong), short_shift(kShort);
    uint64_t c = uint32_t(~crc);
    while (n > 0 && (reinterpret_cast<uintptr_t>(p) & 7) != 0) {
        c = _mm_crc32_u8(uint32_t(c), *p++);
        --n;
    }
    while (n >= 3 * kLong) {
        c = three_streams<kLong>(c, p, long_shift);
        p += 3 * kLong;
        n -= 3 * kLong;
    }
    while (n >= 3 * kShort) {
        c = three_streams<kShort>(c, p, short_shift);
        p += 3 * kShort;
        n -= 3 * kShort;
    }
    while (n >= 8) {
        c = _mm_crc32_u64(c, load64(p));
        p += 8;
        n -= 8;
    }
    while (n-- > 0) c = _mm_crc32_u8(uint32_t(c), *p++);
    return ~uint32_t(c);
}

}  // namespace nlm
