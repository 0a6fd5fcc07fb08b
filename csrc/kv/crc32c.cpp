#include "kv/crc32c.h"

#include <algorithm>
#include <array>
#include <vector>
#include <cstring>

#include "quant/cpu.h"

namespace nlm {
namespace {

constexpr uint32_t kPoly = 0x82F63B78u;  // reflected 0x1EDC6F41

// t[k][b]: the register contribution of byte b seen k bytes before the end of an 8-byte group
struct Tables {
    uint32_t t[8][256];
    Tables() {
        for (uint32_t b = 0; b < 256; ++b) {
            uint32_t c = b;
            for (int i = 0; i < 8; ++i) c = (c >> 1) ^ (kPoly & (0u - (c & 1u)));
            t[0][b] = c;
        }
        for (int k = 1; k < 8; ++k) {
            for (uint32_t b = 0; b < 256; ++b) t[k][b] = (t[k - 1][b] >> 8) ^ t[0][t[k - 1][b] & 0xff];
        }
    }
};

const Tables& tables() {
    static const Tables t;
    return t;
}

// 32x32 GF(2) matrices as 32 columns: m[i] is the image of bit i.
using Mat = std::array<uint32_t, 32>;

uint32_t apply(const Mat& m, uint32_t v) {
    uint32_t r = 0;
    for (int i = 0; v != 0; ++i, v >>= 1) {
        if (v & 1u) r ^= m[size_t(i)];
    }
    return r;
}

Mat mul(const Mat& a, const Mat& b) {  // a after b
    Mat r{};
    for (size_t i = 0; i < 32; ++i) r[i] = apply(a, b[i]);
    return r;
}

}  // namespace

uint32_t crc32c_portable(uint32_t crc, const uint8_t* p, size_t n) {
    const Tables& T = tables();
    uint32_t c = ~crc;
    while (n > 0 && (reinterpret_cast<uintptr_t>(p) & 7) != 0) {
        c = (c >> 8) ^ T.t[0][(c ^ *p++) & 0xff];
        --n;
    }
    while (n >= 8) {
        uint64_t w;
        std::memcpy(&w, p, 8);  // little-endian: the first byte is the lowest
        const uint32_t lo = c ^ uint32_t(w), hi = uint32_t(w >> 32);
        c = T.t[7][lo & 0xff] ^ T.t[6][(lo >> 8) & 0xff] ^ T.t[5][(lo >> 16) & 0xff] ^ T.t[4][lo >> 24] ^
            T.t[3][hi & 0xff] ^ T.t[2][(hi >> 8) & 0xff] ^ T.t[1][(hi >> 16) & 0xff] ^ T.t[0][hi >> 24];
        p += 8;
        n -= 8;
    }
    while (n-- > 0) c = (c >> 8) ^ T.t[0][(c ^ *p++) & 0xff];
    return ~c;
}

Crc32cShift::Crc32cShift(size_t bytes) {
    // one zero bit: c -> (c >> 1) ^ (poly if c & 1)
    Mat bit{};
    bit[0] = kPoly;
    for (size_t i = 1; i < 32; ++i) bit[i] = 1u << (i - 1);
    Mat sq = mul(bit, bit);        // 2 bits
    sq = mul(sq, sq);              // 4
    Mat byte = mul(sq, sq);        // 8 bits: one zero byte
    Mat op{};                      // identity
    for (size_t i = 0; i < 32; ++i) op[i] = 1u << i;
    for (size_t k = bytes; k != 0; k >>= 1) {  // op = byte^bytes, by squaring
        if (k & 1) op = mul(byte, op);
        byte = mul(byte, byte);
    }
    // by linearity: an entry is the entry without its lowest set bit, xor that bit's column
    for (int k = 0; k < 4; ++k) {
        table[k][0] = 0;
        for (uint32_t b = 1; b < 256; ++b) {
            const uint32_t low = b & (~b + 1);
            table[k][b] = table[k][b ^ low] ^ op[size_t(8 * k + __builtin_ctz(low))];
        }
    }
}

uint32_t crc32c_xpow_reflected(unsigned e) {
    uint64_t r = 1;  // x^0
    for (unsigned i = 0; i < e; ++i) {
        r <<= 1;
        if (r & (uint64_t(1) << 32)) r ^= 0x11EDC6F41ull;
    }
    uint32_t out = 0;
    for (int i = 0; i < 32; ++i) {
        if (r & (uint64_t(1) << i)) out |= 1u << (31 - i);
    }
    return out;
}

namespace {
using CrcFn = uint32_t (*)(uint32_t, const uint8_t*, size_t);

struct Choice {
    CrcFn fn;
    const char* name;
};

const Choice& choice() {
    static const Choice c = [] {
#if defined(NLM_HAVE_X86_KERNELS)
        const CpuFeatures& f = cpu_features();
        if (f.sse42 && f.avx512f && f.vpclmulqdq) return Choice{crc32c_avx512, "avx512"};
        if (f.sse42) return Choice{crc32c_sse42, "sse4.2"};
#endif
        return Choice{crc32c_portable, "portable"};
    }();
    return c;
}
}  // namespace

uint32_t crc32c(uint32_t crc, const uint8_t* data, size_t n) { return choice().fn(crc, data, n); }

const char* crc32c_impl() { return choice().name; }

uint32_t crc32c_parallel(uint32_t crc, const uint8_t* data, size_t n, int n_threads) {
    constexpr size_t kMinSpan = size_t(1) << 20;  // below this, one thread is as fast
    const size_t t = std::min<size_t>(size_t(std::max(n_threads, 1)), n / kMinSpan);
    if (t <= 1) return crc32c(crc, data, n);
    const size_t span = (n / t) & ~size_t(63);
    std::vector<uint32_t> raw(t);
#pragma omp parallel for num_threads(int(t)) schedule(static, 1)
    for (size_t i = 0; i < t; ++i) {
        const size_t len = i + 1 == t ? n - span * (t - 1) : span;
        // span 0 extends crc; the others start from a zero register (standard form ~0)
        raw[i] = ~crc32c(i == 0 ? crc : 0xFFFFFFFFu, data + i * span, len);
    }
    const Crc32cShift by_span(span);
    const Crc32cShift by_last(n - span * (t - 1));
    uint32_t r = raw[0];
    for (size_t i = 1; i < t; ++i) r = (i + 1 == t ? by_last(r) : by_span(r)) ^ raw[i];
    return ~r;
}

}  // namespace nlm
