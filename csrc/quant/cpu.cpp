#include "quant/cpu.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#define NLM_X86 1
#endif

namespace nlm {

namespace {

#ifdef NLM_X86
unsigned long long xgetbv0() {
    unsigned int eax, edx;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return (static_cast<unsigned long long>(edx) << 32) | eax;
}

// Linux keeps AMX tile data off until a process asks (arch_prctl ARCH_REQ_XCOMP_PERM).
bool request_amx_permission() {
#ifdef __linux__
    constexpr long kArchGetXcompPerm = 0x1022, kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) != 0) return false;
    unsigned long bitmask = 0;
    if (syscall(SYS_arch_prctl, kArchGetXcompPerm, &bitmask) != 0) return false;
    return (bitmask & (1ul << kXfeatureXtiledata)) != 0;
#else
    return false;
#endif
}
#endif

CpuFeatures detect() {
    CpuFeatures f;
#ifdef NLM_X86
    unsigned int a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
    f.sse42 = (c >> 20) & 1;
    f.pclmul = (c >> 1) & 1;
    const bool osxsave = (c >> 27) & 1;
    f.fma = (c >> 12) & 1;
    f.f16c = (c >> 29) & 1;
    const bool avx = (c >> 28) & 1;
    if (!osxsave || !avx) return f;
    const unsigned long long xcr0 = xgetbv0();
    const bool ymm_os = (xcr0 & 0x6) == 0x6;
    const bool zmm_os = (xcr0 & 0xe6) == 0xe6;
    const bool tile_os = (xcr0 & 0x60000) == 0x60000;
    if (!ymm_os) {
        f.fma = f.f16c = false;
        return f;
    }
    __cpuid_count(7, 0, a, b, c, d);
    f.avx2 = (b >> 5) & 1;
    if (zmm_os) {
        f.avx512f = (b >> 16) & 1;
        f.avx512dq = (b >> 17) & 1;
        f.avx512bw = (b >> 30) & 1;
        f.avx512vl = (b >> 31) & 1;
        f.avx512vnni = (c >> 11) & 1;
        f.vpclmulqdq = (c >> 10) & 1;
    }
    f.amx_bf16 = tile_os && ((d >> 22) & 1);
    f.amx_tile = tile_os && ((d >> 24) & 1);
    f.amx_int8 = tile_os && ((d >> 25) & 1);
    __cpuid_count(7, 1, a, b, c, d);
    f.avxvnni = (a >> 4) & 1;
    f.avx512bf16 = zmm_os && ((a >> 5) & 1);
    f.amx_usable = f.amx_tile && (f.amx_bf16 || f.amx_int8) && f.avx512f && f.avx512bw && request_amx_permission();
#endif
#if defined(__aarch64__)
    f.neon = true;
#endif
    return f;
}

}  // namespace

std::string CpuFeatures::describe() const {
    std::string s;
    auto add = [&](bool on, const char* name) {
        if (on) s += (s.empty() ? "" : " ") + std::string(name);
    };
    add(sse42, "sse4.2");
    add(pclmul, "pclmul");
    add(vpclmulqdq, "vpclmulqdq");
    add(avx2, "avx2");
    add(fma, "fma");
    add(f16c, "f16c");
    add(avx512f, "avx512f");
    add(avx512bw, "avx512bw");
    add(avx512vl, "avx512vl");
    add(avx512dq, "avx512dq");
    add(avx512vnni, "avx512vnni");
    add(avx512bf16, "avx512bf16");
    add(avxvnni, "avxvnni");
    add(amx_tile, "amx_tile");
    add(amx_bf16, "amx_bf16");
    add(amx_int8, "amx_int8");
    add(amx_usable, "amx_usable");
    add(neon, "neon");
    return s;
}

const CpuFeatures& cpu_features() {
    static const CpuFeatures f = detect();
    return f;
}

}  // namespace nlm
