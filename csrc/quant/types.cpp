#include "quant/types.h"

#include "quant/formats.h"
#include "quant/ref.h"

namespace nlm {

const TypeTraits* type_traits(uint32_t type) {
    static const TypeTraits f32{"F32", 1, 4, dequantize_row_f32_ref, vec_dot_f32_ref};
    static const TypeTraits f16{"F16", 1, 2, dequantize_row_f16_ref, vec_dot_f16_ref};
    static const TypeTraits bf16{"BF16", 1, 2, dequantize_row_bf16_ref, vec_dot_bf16_ref};
    static const TypeTraits q4_0{"Q4_0", QK4_0, sizeof(block_q4_0), dequantize_row_q4_0_ref, vec_dot_q4_0_ref};
    static const TypeTraits q4_1{"Q4_1", QK4_1, sizeof(block_q4_1), dequantize_row_q4_1_ref, vec_dot_q4_1_ref};
    static const TypeTraits q5_0{"Q5_0", QK5_0, sizeof(block_q5_0), dequantize_row_q5_0_ref, vec_dot_q5_0_ref};
    static const TypeTraits q5_1{"Q5_1", QK5_1, sizeof(block_q5_1), dequantize_row_q5_1_ref, vec_dot_q5_1_ref};
    static const TypeTraits q8_0{"Q8_0", QK8_0, sizeof(block_q8_0), dequantize_row_q8_0_ref, vec_dot_q8_0_ref};
    static const TypeTraits q4_K{"Q4_K", QK_K, sizeof(block_q4_K), dequantize_row_q4_K_ref, vec_dot_q4_K_ref};
    static const TypeTraits q5_K{"Q5_K", QK_K, sizeof(block_q5_K), dequantize_row_q5_K_ref, vec_dot_q5_K_ref};
    static const TypeTraits q6_K{"Q6_K", QK_K, sizeof(block_q6_K), dequantize_row_q6_K_ref, vec_dot_q6_K_ref};
    switch (static_cast<GGMLType>(type)) {
        case GGMLType::F32: return &f32;
        case GGMLType::F16: return &f16;
        case GGMLType::BF16: return &bf16;
        case GGMLType::Q4_0: return &q4_0;
        case GGMLType::Q4_1: return &q4_1;
        case GGMLType::Q5_0: return &q5_0;
        case GGMLType::Q5_1: return &q5_1;
        case GGMLType::Q8_0: return &q8_0;
        case GGMLType::Q4_K: return &q4_K;
        case GGMLType::Q5_K: return &q5_K;
        case GGMLType::Q6_K: return &q6_K;
    }
    return nullptr;
}

}  // namespace nlm
