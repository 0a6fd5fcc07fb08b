#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "quant/cpu.h"
#include "quant/formats.h"
#include "quant/kernels.h"

namespace nlm {

bool uses_q8_activations(uint32_t type) {
    switch (static_cast<GGMLType>(type)) {
        case GGMLType::F32: case GGMLType::F16: case GGMLType::BF16: return false;
        default: return true;
    }
}

Q8Mode q8_mode_for(uint32_t type) {
    switch (static_cast<GGMLType>(type)) {
        case GGMLType::Q4_K: case GGMLType::Q5_K: case GGMLType::Q6_K: return Q8Mode::Q8_K;
        default: return Q8Mode::Q8_0;
    }
}

#if defined(NLM_HAVE_X86_KERNELS)
namespace {

// The AMX path is offered only where it reproduces the avx512 tier bit for bit: every packed format,
// a row-group tail, two full tiles and a tail of activation rows, on pseudo-random blocks.
bool amx_proves_itself() {
    struct Case {
        GGMLType type;
        size_t block_bytes;
        int block_elems;
        std::vector<size_t> f16_fields;  // byte offsets of the f16 scales in a block
    };
    const Case cases[] = {
        {GGMLType::Q8_0, 34, 32, {0}},   {GGMLType::Q4_0, 18, 32, {0}},     {GGMLType::Q4_1, 20, 32, {0, 2}},
        {GGMLType::Q5_0, 22, 32, {0}},   {GGMLType::Q5_1, 24, 32, {0, 2}},  {GGMLType::Q4_K, 144, 256, {0, 2}},
        {GGMLType::Q5_K, 176, 256, {0, 2}}, {GGMLType::Q6_K, 210, 256, {208}},
    };
    const int64_t rows = 40, cols = 512, m = 37;
    uint64_t state = 0x9E3779B97F4A7C15ull;
    auto next = [&state]() {
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        return uint32_t(state >> 33);
    };
    std::vector<float> x(size_t(m * cols));
    for (float& v : x) v = float(int(next() % 2001) - 1000) / 250.0f;
    try {
        for (const Case& c : cases) {
            const size_t n_blocks = size_t(rows * cols / c.block_elems);
            std::vector<uint8_t> raw(n_blocks * c.block_bytes);
            for (uint8_t& b : raw) b = uint8_t(next());
            for (size_t i = 0; i < n_blocks; ++i) {
                for (size_t off : c.f16_fields) {
                    const uint16_t h = uint16_t((next() & 0x83ff) | 0x3000);  // finite, 2^-3 .. 2^-2
                    std::memcpy(&raw[i * c.block_bytes + off], &h, 2);
                }
            }
            const auto w = pack_weights(uint32_t(c.type), raw.data(), rows, cols, 16, false);
            Q8Buffer q;
            q.quantize(x.data(), m, cols, q8_mode_for(uint32_t(c.type)), 1);
            std::vector<Q8Row> xr;
            for (int64_t t = 0; t < m; ++t) xr.push_back(q.row(t));
            std::vector<float> want(size_t(m * rows)), got(size_t(m * rows));
            kernels_avx512().packed(*w, xr.data(), m, want.data(), rows, 0, w->groups);
            kernels_amx().packed(*w, xr.data(), m, got.data(), rows, 0, w->groups);
            if (std::memcmp(want.data(), got.data(), want.size() * sizeof(float)) != 0) return false;
        }
    } catch (...) {
        return false;
    }
    return true;
}

}  // namespace
#endif

std::vector<const KernelSet*> available_kernel_sets() {
    std::vector<const KernelSet*> out{&kernels_generic()};
#if defined(NLM_HAVE_X86_KERNELS)
    const CpuFeatures& f = cpu_features();
    if (f.has_avx2_tier()) out.push_back(&kernels_avx2());
    if (f.has_avx2_tier() && f.avxvnni) out.push_back(&kernels_avxvnni());
    if (f.has_avx512_tier() && f.avx512vnni) {
        out.push_back(&kernels_avx512());
        static const bool amx_ok = f.amx_usable && f.amx_int8 && amx_proves_itself();
        if (amx_ok) out.push_back(&kernels_amx());
    }
#endif
    return out;
}

const KernelSet* find_kernel_set(const std::string& name) {
    for (const KernelSet* ks : available_kernel_sets()) {
        if (name == ks->name) return ks;
    }
    return nullptr;
}

const char* kernel_tier_names() { return "generic, avx2, avxvnni, avx512, amx"; }

const KernelSet& active_kernels() {
    static const KernelSet* chosen = [] {
        const char* env = std::getenv("NLM_KERNELS");
        if (env != nullptr && *env != '\0') {
            const KernelSet* ks = find_kernel_set(env);
            if (ks == nullptr) {
                throw std::invalid_argument(std::string("NLM_KERNELS=") + env +
                                            " is not a kernel tier this CPU supports (tiers: " +
                                            kernel_tier_names() + ")");
            }
            return ks;
        }
        return available_kernel_sets().back();
    }();
    return *chosen;
}

}  // namespace nlm
