#include "quant/packed.h"

#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "common/memory.h"
#include "quant/formats.h"
#include "quant/fp16.h"
#include "quant/types.h"

namespace nlm {

namespace {

void scale_min_k4(int j, const uint8_t* q, int* sc, int* mn) {
    if (j < 4) {
        *sc = q[j] & 63;
        *mn = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4);
        *mn = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

void nibble_codes(const uint8_t* qs, uint8_t* code) {
    for (int j = 0; j < 16; ++j) {
        code[j] = qs[j] & 0x0f;
        code[j + 16] = qs[j] >> 4;
    }
}

// Writes row `src` as lane `lane` of the packed units of its group.
void pack_row(uint32_t type, const PackFormat& f, const uint8_t* src, int lane, int64_t units, size_t unit_bytes,
              uint8_t* group);

}  // namespace

size_t PackFormat::codes_bytes() const {
    const size_t cb = chunk_bytes();
    switch (kind) {
        case PackKind::Byte: return 8 * cb;
        case PackKind::Nibble: return 4 * cb;
        case PackKind::Nibble5: return 5 * cb;
        case PackKind::Nibble6: return 6 * cb;
    }
    return 0;
}

bool pack_format(uint32_t type, int rows, bool signed_bytes, PackFormat* f) {
    if (rows != 8 && rows != 16) return false;
    switch (static_cast<GGMLType>(type)) {
        case GGMLType::Q8_0: *f = {PackKind::Byte, signed_bytes ? -1 : 7, true, false, false}; break;
        case GGMLType::Q4_0: *f = {PackKind::Nibble, 3, true, false, false}; break;
        case GGMLType::Q4_1: *f = {PackKind::Nibble, -1, true, false, true}; break;
        case GGMLType::Q5_0: *f = {PackKind::Nibble5, 4, true, false, false}; break;
        case GGMLType::Q5_1: *f = {PackKind::Nibble5, -1, true, false, true}; break;
        case GGMLType::Q4_K: *f = {PackKind::Nibble, -1, false, false, true}; break;
        case GGMLType::Q5_K: *f = {PackKind::Nibble5, -1, false, false, true}; break;
        case GGMLType::Q6_K: *f = {PackKind::Nibble6, 5, false, true, false}; break;
        default: return false;
    }
    f->rows = rows;
    f->signed_codes = signed_bytes && f->kind == PackKind::Byte;
    return true;
}

void decode_unit(uint32_t type, const uint8_t* row, int64_t u, UnitCodes* out) {
    out->min = 0.0f;
    switch (static_cast<GGMLType>(type)) {
        case GGMLType::Q8_0: {
            const auto& b = reinterpret_cast<const block_q8_0*>(row)[u];
            for (int j = 0; j < 32; ++j) out->code[j] = uint8_t(int(b.qs[j]) + 128);
            out->scale[0] = out->scale[1] = fp16_to_f32(b.d);
            return;
        }
        case GGMLType::Q4_0: case GGMLType::Q4_1: {
            const bool q41 = static_cast<GGMLType>(type) == GGMLType::Q4_1;
            const uint8_t* p = row + size_t(u) * (q41 ? sizeof(block_q4_1) : sizeof(block_q4_0));
            uint16_t d, m = 0;
            std::memcpy(&d, p, 2);
            if (q41) std::memcpy(&m, p + 2, 2);
            nibble_codes(p + (q41 ? 4 : 2), out->code);
            out->scale[0] = out->scale[1] = fp16_to_f32(d);
            if (q41) out->min = fp16_to_f32(m);
            return;
        }
        case GGMLType::Q5_0: case GGMLType::Q5_1: {
            const bool q51 = static_cast<GGMLType>(type) == GGMLType::Q5_1;
            const uint8_t* p = row + size_t(u) * (q51 ? sizeof(block_q5_1) : sizeof(block_q5_0));
            uint16_t d, m = 0;
            std::memcpy(&d, p, 2);
            if (q51) std::memcpy(&m, p + 2, 2);
            uint32_t qh;
            std::memcpy(&qh, p + (q51 ? 4 : 2), 4);
            nibble_codes(p + (q51 ? 8 : 6), out->code);
            for (int j = 0; j < 32; ++j) out->code[j] |= uint8_t(((qh >> j) & 1u) << 4);
            out->scale[0] = out->scale[1] = fp16_to_f32(d);
            if (q51) out->min = fp16_to_f32(m);
            return;
        }
        case GGMLType::Q4_K: case GGMLType::Q5_K: {
            const bool q5 = static_cast<GGMLType>(type) == GGMLType::Q5_K;
            const int j = int(u % 8);
            const uint8_t* p = row + size_t(u / 8) * (q5 ? sizeof(block_q5_K) : sizeof(block_q4_K));
            uint16_t d, dmin;
            std::memcpy(&d, p, 2);
            std::memcpy(&dmin, p + 2, 2);
            const uint8_t* scales = p + 4;
            const uint8_t* qh = q5 ? p + 4 + K_SCALE_SIZE : nullptr;
            const uint8_t* qs = p + 4 + K_SCALE_SIZE + (q5 ? QK_K / 8 : 0) + 32 * (j / 2);
            for (int l = 0; l < 32; ++l) {
                int c = (qs[l] >> (4 * (j % 2))) & 0x0f;
                if (q5) c |= ((qh[l] >> j) & 1) << 4;
                out->code[l] = uint8_t(c);
            }
            int sc, mn;
            scale_min_k4(j, scales, &sc, &mn);
            out->scale[0] = out->scale[1] = fp16_to_f32(d) * float(sc);
            out->min = -(fp16_to_f32(dmin) * float(mn));
            return;
        }
        case GGMLType::Q6_K: {
            const auto& b = reinterpret_cast<const block_q6_K*>(row)[u / 8];
            const int v = int(u % 8), h = v / 4, r = v % 4;
            for (int l = 0; l < 32; ++l) {
                const int lo = (b.ql[64 * h + 32 * (r % 2) + l] >> (4 * (r / 2))) & 0x0f;
                const int hi = (b.qh[32 * h + l] >> (2 * r)) & 3;
                out->code[l] = uint8_t(lo | (hi << 4));
            }
            const float d = fp16_to_f32(b.d);
            out->scale[0] = d * float(b.scales[8 * h + 2 * r]);
            out->scale[1] = d * float(b.scales[8 * h + 2 * r + 1]);
            return;
        }
        default:
            throw std::invalid_argument("decode_unit: type " + std::to_string(type) + " has no packed form");
    }
}

namespace {

void pack_row(uint32_t type, const PackFormat& f, const uint8_t* src, int lane, int64_t units, size_t unit_bytes,
              uint8_t* group) {
    const size_t cb = f.chunk_bytes();
    UnitCodes uc;
    for (int64_t u = 0; u < units; ++u) {
        decode_unit(type, src, u, &uc);
        uint8_t* dst = group + size_t(u) * unit_bytes;
        for (int e = 0; e < 32; ++e) {
            const int c = e / 4, i = e % 4;
            const size_t byte = size_t(4 * lane + i);
            const uint8_t code = uc.code[e];
            if (f.kind == PackKind::Byte) {
                dst[cb * size_t(c) + byte] = f.signed_codes ? uint8_t(code ^ 0x80) : code;  // q + 128 -> q
                continue;
            }
            // nibbles: chunk c < 4 in the low half of byte row c, chunk c >= 4 in the high half of row c - 4
            dst[cb * size_t(c % 4) + byte] |= uint8_t((code & 0x0f) << (c < 4 ? 0 : 4));
            uint8_t* extra = dst + 4 * cb;
            if (f.kind == PackKind::Nibble5 && (code & 0x10)) {
                if (f.rows == 16) {
                    uint64_t m;
                    std::memcpy(&m, extra + 8 * c, 8);
                    m |= uint64_t(1) << byte;
                    std::memcpy(extra + 8 * c, &m, 8);
                } else {
                    extra[byte] |= uint8_t(1u << c);
                }
            }
            if (f.kind == PackKind::Nibble6) extra[cb * size_t(c / 4) + byte] |= uint8_t(((code >> 4) & 3) << (2 * (c % 4)));
        }
        uint8_t* sc = dst + f.codes_bytes();
        if (f.scale_f16) {
            const uint16_t h = f32_to_fp16(uc.scale[0]);  // exact: the scale is a stored f16
            std::memcpy(sc + 2 * lane, &h, 2);
        } else {
            std::memcpy(sc + 4 * lane, &uc.scale[0], 4);
            if (f.two_scales) std::memcpy(sc + 4 * f.rows + 4 * lane, &uc.scale[1], 4);
        }
        if (f.has_min) std::memcpy(sc + f.scales_bytes() + 4 * lane, &uc.min, 4);
    }
}

}  // namespace

std::unique_ptr<PackedWeights> pack_weights(uint32_t type, const uint8_t* data, int64_t rows, int64_t cols,
                                            int group_rows, bool signed_bytes) {
    auto pw = std::make_unique<PackedWeights>();
    if (!pack_format(type, group_rows, signed_bytes, &pw->fmt)) {
        throw std::invalid_argument("pack_weights: type " + std::to_string(type) + " has no packed form in groups of " +
                                    std::to_string(group_rows) + " rows");
    }
    const TypeTraits* t = type_traits(type);
    if (t == nullptr || rows <= 0 || cols <= 0 || cols % t->block_size != 0 || rows > (int64_t(1) << 31) ||
        cols > (int64_t(1) << 31)) {
        throw std::invalid_argument("pack_weights: bad shape " + std::to_string(rows) + " x " + std::to_string(cols));
    }
    const PackFormat& f = pw->fmt;
    pw->type = type;
    pw->rows = rows;
    pw->cols = cols;
    pw->groups = (rows + f.rows - 1) / f.rows;
    pw->units = cols / 32;
    pw->unit_bytes = f.unit_bytes();
    const size_t total = pw->n_bytes();
    pw->data = alloc_buffer(total, "repacked weights");

    const size_t src_row = row_bytes(*t, cols);
    // Groups are independent (a group's rows write only its own units), so threads take groups.
#pragma omp parallel for schedule(static)
    for (int64_t g = 0; g < pw->groups; ++g) {
        uint8_t* group = pw->data.get() + size_t(g) * size_t(pw->units) * pw->unit_bytes;
        for (int64_t lane = 0; lane < f.rows && g * f.rows + lane < rows; ++lane) {
            pack_row(type, f, data + size_t(g * f.rows + lane) * src_row, int(lane), pw->units, pw->unit_bytes, group);
        }
    }
    return pw;
}

}  // namespace nlm
