#include <cstdlib>
#include <stdexcept>

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

std::vector<const KernelSet*> available_kernel_sets() {
    std::vector<const KernelSet*> out{&kernels_generic()};
#if defined(NLM_HAVE_X86_KERNELS)
    const CpuFeatures& f = cpu_features();
    if (f.has_avx2_tier()) out.push_back(&kernels_avx2());
    if (f.has_avx2_tier() && f.avxvnni) out.push_back(&kernels_avxvnni());
    if (f.has_avx512_tier() && f.avx512vnni) out.push_back(&kernels_avx512());
#endif
    return out;
}

const KernelSet* find_kernel_set(const std::string& name) {
    for (const KernelSet* ks : available_kernel_sets()) {
        if (name == ks->name) return ks;
    }
    return nullptr;
}

const char* kernel_tier_names() { return "generic, avx2, avxvnni, avx512"; }

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
