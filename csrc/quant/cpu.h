// What the CPU can do, detected once (cpuid + xgetbv; AMX also needs the
// kernel's permission for its tile state).
#pragma once

#include <string>

namespace nlm {

struct CpuFeatures {
    bool avx2 = false, fma = false, f16c = false;
    bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false;
    bool avx512vnni = false, avx512bf16 = false, avxvnni = false;
    bool amx_tile = false, amx_bf16 = false, amx_int8 = false;
    bool amx_usable = false;  // tile data permission granted by the OS
    bool sse42 = false, pclmul = false, vpclmulqdq = false;  // CRC32C (kv/crc32c.h)
    bool neon = false;

    bool has_avx2_tier() const { return avx2 && fma && f16c; }
    bool has_avx512_tier() const { return has_avx2_tier() && avx512f && avx512bw && avx512vl && avx512dq; }
    std::string describe() const;
};

// Detected on first use; the same object afterwards.
const CpuFeatures& cpu_features();

}  // namespace nlm
