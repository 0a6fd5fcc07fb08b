// Python bindings of the core: conversions and argument checks only.
#include <dlfcn.h>
#include <omp.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

#include "bench/membw.h"
#include "common/compute_thread.h"
#include "common/error.h"
#include "gguf/gguf.h"
#include "kv/crc32c.h"
#include "model/model.h"
#include "model/ops.h"
#include "quant/cpu.h"
#include "quant/kernels.h"
#include "quant/fp16.h"
#include "quant/q8.h"
#include "quant/types.h"
#include "sample/sample.h"

namespace py = pybind11;
using namespace nlm;

namespace {

py::str decode_str(const std::string& s) {
    // GGUF strings are UTF-8; bytes that are not survive as surrogates instead of failing the read.
    PyObject* o = PyUnicode_DecodeUTF8(s.data(), Py_ssize_t(s.size()), "surrogateescape");
    if (o == nullptr) throw py::error_already_set();
    return py::reinterpret_steal<py::str>(o);
}

template <typename T>
T load_le(const uint8_t* p) {
    T x;
    std::memcpy(&x, p, sizeof x);
    return x;
}

// Element i of a numeric or bool array, read from its bytes in the mapping.
py::object array_element(const GGUFValue& v, uint64_t i) {
    const uint8_t* p = v.raw;
    switch (v.elem_type) {
        case GGUFType::UINT8: return py::int_(p[i]);
        case GGUFType::INT8: return py::int_(load_le<int8_t>(p + i));
        case GGUFType::UINT16: return py::int_(load_le<uint16_t>(p + 2 * i));
        case GGUFType::INT16: return py::int_(load_le<int16_t>(p + 2 * i));
        case GGUFType::UINT32: return py::int_(load_le<uint32_t>(p + 4 * i));
        case GGUFType::INT32: return py::int_(load_le<int32_t>(p + 4 * i));
        case GGUFType::UINT64: return py::int_(load_le<uint64_t>(p + 8 * i));
        case GGUFType::INT64: return py::int_(load_le<int64_t>(p + 8 * i));
        case GGUFType::FLOAT32: return py::float_(load_le<float>(p + 4 * i));
        case GGUFType::FLOAT64: return py::float_(load_le<double>(p + 8 * i));
        case GGUFType::BOOL: return py::bool_(p[i] != 0);
        default: return py::none();
    }
}

py::object to_python(const GGUFValue& v) {
    switch (v.type) {
        case GGUFType::UINT8: case GGUFType::UINT16: case GGUFType::UINT32: case GGUFType::UINT64:
            return py::int_(v.u);
        case GGUFType::INT8: case GGUFType::INT16: case GGUFType::INT32: case GGUFType::INT64:
            return py::int_(v.i);
        case GGUFType::FLOAT32: case GGUFType::FLOAT64:
            return py::float_(v.f);
        case GGUFType::BOOL:
            return py::bool_(v.i != 0);
        case GGUFType::STRING:
            return decode_str(v.s);
        case GGUFType::ARRAY: {
            py::list out(v.n);
            if (v.elem_type == GGUFType::STRING) {
                for (size_t i = 0; i < v.strs.size(); ++i) out[i] = decode_str(v.strs[i]);
            } else if (v.elem_type == GGUFType::ARRAY) {
                for (size_t i = 0; i < v.elems.size(); ++i) out[i] = to_python(v.elems[i]);
            } else {
                for (uint64_t i = 0; i < v.n; ++i) out[i] = array_element(v, i);
            }
            return std::move(out);
        }
    }
    return py::none();
}

py::dict file_to_python(const GGUFFile& f) {
    py::dict meta;
    for (const auto& [key, value] : f.metadata()) meta[decode_str(key)] = to_python(value);
    py::list tensors;
    for (const GGUFTensorInfo& t : f.tensors()) {
        py::dict d;
        d["name"] = decode_str(t.name);
        d["type_id"] = t.type;
        d["type"] = type_traits(t.type)->name;
        d["shape"] = py::tuple(py::cast(t.ne));
        d["offset"] = f.data_offset() + t.offset;
        d["n_bytes"] = t.n_bytes;
        tensors.append(std::move(d));
    }
    py::dict out;
    out["path"] = f.path();
    out["version"] = f.version();
    out["alignment"] = f.alignment();
    out["data_offset"] = f.data_offset();
    out["directory_end"] = f.directory_end();
    out["file_size"] = f.file_size();
    out["metadata"] = std::move(meta);
    out["tensors"] = std::move(tensors);
    return out;
}

const TypeTraits& traits_or_throw(uint32_t type) {
    const TypeTraits* t = type_traits(type);
    if (t == nullptr) throw py::value_error("unsupported ggml type id " + std::to_string(type));
    return *t;
}

// A kernel tier by name: "" is the active one, "ref" is null (the reference path).
const KernelSet* tier_or_throw(const std::string& tier) {
    if (tier.empty()) return &active_kernels();
    if (tier == "ref") return nullptr;
    const KernelSet* ks = find_kernel_set(tier);
    if (ks == nullptr) throw py::value_error("kernel tier '" + tier + "' is unknown or not supported by this CPU");
    return ks;
}

KVType kv_type_or_throw(const std::string& name) {
    for (const KVType t : {KVType::F16, KVType::F32, KVType::Q8, KVType::Q4}) {
        if (name == kv_type_name(t)) return t;
    }
    throw py::value_error("kv_codec must be 'f16', 'f32', 'int8' or 'int4', got '" + name + "'");
}

using U8Array = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>;
using F32Array = py::array_t<float, py::array::c_style | py::array::forcecast>;
using I32Array = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;

// Checks that `data` holds exactly `rows` rows of `cols` elements of `t`.
void check_rows(const TypeTraits& t, const U8Array& data, int64_t rows, int64_t cols) {
    if (cols <= 0 || rows <= 0) throw py::value_error("rows and cols must be positive");
    if (cols % t.block_size != 0) {
        throw py::value_error(std::string("row length ") + std::to_string(cols) + " is not a multiple of the " + t.name +
                              " block size " + std::to_string(t.block_size));
    }
    const size_t want = row_bytes(t, cols) * size_t(rows);
    if (size_t(data.size()) != want) {
        throw py::value_error(std::string(t.name) + ": expected " + std::to_string(want) + " bytes for " + std::to_string(rows) +
                              " x " + std::to_string(cols) + ", got " + std::to_string(data.size()));
    }
}

// `data` itself when its buffer is aligned for the kernels' loads (4 bytes), else an aligned copy.
U8Array aligned(const U8Array& data) {
    if (reinterpret_cast<uintptr_t>(data.data()) % 4 == 0) return data;
    return U8Array(data.size(), data.data());  // numpy allocates aligned buffers
}

// Repacks `data` for the packed kernel of `ks` when it has one for `type`, else null.
std::unique_ptr<PackedWeights> pack_for(const KernelSet* ks, uint32_t type, const uint8_t* data, int64_t rows, int64_t cols) {
    PackFormat f;
    if (ks == nullptr || ks->packed == nullptr || !pack_format(type, ks->pack_rows, ks->pack_signed_bytes, &f)) return nullptr;
    return pack_weights(type, data, rows, cols, ks->pack_rows, ks->pack_signed_bytes);
}

// A packed matrix and the tier whose kernel reads its layout.
struct PyPacked {
    std::unique_ptr<PackedWeights> w;
    const KernelSet* ks;
};

// Guards a Model against concurrent forward calls from several Python threads.
struct PyModel {
    std::unique_ptr<Model> model;
    std::mutex mu;
};

BatchView batch_view(const I32Array& tokens, const I32Array& positions, const I32Array& seq_ids,
                     const I32Array& logit_rows) {
    const int64_t n = tokens.size();
    if (tokens.ndim() != 1 || positions.ndim() != 1 || seq_ids.ndim() != 1 || logit_rows.ndim() != 1) {
        throw py::value_error("forward: tokens, positions, seq_ids and logit_rows must be 1-D");
    }
    if (positions.size() != n || seq_ids.size() != n) {
        throw py::value_error("forward: tokens (" + std::to_string(n) + "), positions (" + std::to_string(positions.size()) +
                              ") and seq_ids (" + std::to_string(seq_ids.size()) + ") must have the same length");
    }
    BatchView b;
    b.tokens = tokens.data();
    b.positions = positions.data();
    b.seq_ids = seq_ids.data();
    b.n = n;
    b.logit_rows = logit_rows.data();
    b.n_logits = logit_rows.size();
    return b;
}

// The logits array: `out` when given (float32, C-contiguous, (n_logits, V), written in place), else a new one.
py::array_t<float> logits_array(const PyModel& self, const BatchView& b, const py::object& out) {
    const int64_t V = self.model->hparams().n_vocab;
    if (out.is_none()) return py::array_t<float>({b.n_logits, V});
    if (!py::isinstance<py::array_t<float>>(out)) throw py::value_error("forward: out must be a float32 numpy array");
    auto a = py::reinterpret_borrow<py::array_t<float>>(out);
    if (a.ndim() != 2 || a.shape(0) != b.n_logits || a.shape(1) != V || !(a.flags() & py::array::c_style) ||
        !a.writeable()) {
        throw py::value_error("forward: out must be a writeable C-contiguous float32 array of shape (" +
                              std::to_string(b.n_logits) + ", " + std::to_string(V) + ")");
    }
    return a;
}

py::array_t<float> py_forward(PyModel& self, const I32Array& tokens, const I32Array& positions, const I32Array& seq_ids,
                              const I32Array& logit_rows, const py::object& out) {
    const BatchView b = batch_view(tokens, positions, seq_ids, logit_rows);
    py::array_t<float> logits = logits_array(self, b, out);
    float* dst = logits.mutable_data();
    {
        py::gil_scoped_release release;
        std::lock_guard<std::mutex> lock(self.mu);
        run_on_compute_thread([&] { self.model->forward(b, dst); });
    }
    return logits;
}

// Test hook: forward() bracketed by the allocation counter of an LD_PRELOAD'ed malloc shim that exports
// nlm_alloc_probe_start / nlm_alloc_probe_stop (tests/test_forward_state.py); the heap allocations made
// inside the core's forward pass, or -1 when no shim is loaded.
long py_forward_counting_allocations(PyModel& self, const I32Array& tokens, const I32Array& positions,
                                     const I32Array& seq_ids, const I32Array& logit_rows, py::array_t<float>& out) {
    using start_fn = void (*)();
    using stop_fn = long (*)();
    auto start = reinterpret_cast<start_fn>(dlsym(RTLD_DEFAULT, "nlm_alloc_probe_start"));
    auto stop = reinterpret_cast<stop_fn>(dlsym(RTLD_DEFAULT, "nlm_alloc_probe_stop"));
    if (start == nullptr || stop == nullptr) return -1;
    const BatchView b = batch_view(tokens, positions, seq_ids, logit_rows);
    py::array_t<float> logits = logits_array(self, b, out);
    float* dst = logits.mutable_data();
    py::gil_scoped_release release;
    std::lock_guard<std::mutex> lock(self.mu);
    long n = -1;
    const std::function<void()> task = [&] {  // built before counting starts
        start();
        try {
            self.model->forward(b, dst);
        } catch (...) {
            stop();
            throw;
        }
        n = stop();
    };
    run_on_compute_thread(task);
    return n;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "nlm_native C++ core: GGUF reader, quantized kernels, LLaMA/Qwen2 forward pass, paged KV cache";

    py::register_exception<GGUFError>(m, "GGUFError", PyExc_ValueError);
    py::register_exception<ModelError>(m, "ModelError", PyExc_ValueError);
    py::register_exception<KVCacheFull>(m, "KVCacheFull", PyExc_RuntimeError);
    py::register_exception<NumericError>(m, "NumericError", PyExc_ArithmeticError);

    m.def(
        "gguf_read", [](const std::string& path) { return file_to_python(GGUFFile(path)); }, py::arg("path"),
        "Read and validate a GGUF file: version, alignment, offsets, metadata dict and tensor directory.");

    m.def("omp_max_threads", []() { return omp_get_max_threads(); });

    // CRC32C (kv/crc32c.h) of any contiguous buffer, extending `value`.
    auto crc_of = [](uint32_t (*fn)(uint32_t, const uint8_t*, size_t)) {
        return [fn](const py::buffer& data, uint32_t value) {
            const py::buffer_info info = data.request();
            if (info.ndim > 1 && !(info.strides.empty())) {
                ssize_t expect = info.itemsize;
                for (ssize_t i = info.ndim - 1; i >= 0; --i) {
                    if (info.strides[size_t(i)] != expect) throw py::value_error("crc32c: the buffer is not contiguous");
                    expect *= info.shape[size_t(i)];
                }
            } else if (info.ndim == 1 && info.strides[0] != info.itemsize) {
                throw py::value_error("crc32c: the buffer is not contiguous");
            }
            const auto* p = static_cast<const uint8_t*>(info.ptr);
            const size_t n = size_t(info.size) * size_t(info.itemsize);
            if (n < (1u << 16)) return fn(value, p, n);
            py::gil_scoped_release release;
            return fn(value, p, n);
        };
    };
    m.def("crc32c", crc_of([](uint32_t v, const uint8_t* p, size_t n) {
              if (n < (size_t(2) << 20)) return crc32c(v, p, n);
              uint32_t r = 0;
              run_on_compute_thread([&] { r = crc32c_parallel(v, p, n, omp_get_num_procs()); });
              return r;
          }), py::arg("data"), py::arg("value") = 0,
          "CRC32C (Castagnoli) of a bytes-like object, extending value (crc32c(b, crc32c(a)) == crc32c(a + b))");
    m.def("crc32c_impl", []() { return std::string(crc32c_impl()); }, "The CRC32C implementation in use");
    // The KV codecs (kv/codec.h) of one tier, over a stack of blocks: x (blocks, rows, head_dim) float32.
    auto codec_of = [](const std::string& tier, const std::string& codec) -> const KVCodecKernels& {
        const KernelSet* ks = tier_or_throw(tier);
        const KVType t = kv_type_or_throw(codec);
        if (t != KVType::Q8 && t != KVType::Q4) throw py::value_error("kv codec kernels exist for 'int8' and 'int4', not '" + codec + "'");
        const KernelSet& k = ks != nullptr ? *ks : kernels_generic();
        return *(t == KVType::Q8 ? k.kv8 : k.kv4);
    };
    auto check_part = [](const std::string& part) {
        if (part != "k" && part != "v") throw py::value_error("part must be 'k' (keys, per channel) or 'v' (values, per token), got '" + part + "'");
        return part == "k";
    };
    // `out`, when given, is a writable uint8 array of the encoded size: written in place (for benches).
    m.def("kv_encode", [codec_of, check_part](const F32Array& x, const std::string& codec, const std::string& part,
                                              const std::string& tier, py::object out_arr) -> py::object {
        const bool keys = check_part(part);
        const KVCodecKernels& c = codec_of(tier, codec);
        if (x.ndim() != 3) throw py::value_error("kv_encode: x must be (blocks, rows, head_dim)");
        const int nb = int(x.shape(0)), n = int(x.shape(1)), d = int(x.shape(2));
        if (nb <= 0 || n <= 0 || d <= 0 || d % kKVValueGroup != 0) {
            throw py::value_error("kv_encode: blocks and rows must be positive and head_dim a positive multiple of 32");
        }
        const int bits = codec == "int8" ? 8 : 4;
        const size_t per = keys ? kv_codec_k_bytes(bits, n, d) : kv_codec_v_bytes(bits, n, d);
        std::string out;
        uint8_t* dst = nullptr;
        if (out_arr.is_none()) {
            out.assign(per * size_t(nb), '\0');
            dst = reinterpret_cast<uint8_t*>(&out[0]);
        } else {
            auto a = out_arr.cast<py::array_t<uint8_t>>();
            if (!(a.flags() & py::array::c_style) || !a.writeable() || size_t(a.size()) != per * size_t(nb) ||
                !py::isinstance<py::array_t<uint8_t>>(out_arr)) {
                throw py::value_error("kv_encode: out must be a writable C-contiguous uint8 array of " +
                                      std::to_string(per * size_t(nb)) + " bytes");
            }
            dst = a.mutable_data();
        }
        const float* src = x.data();
        {
            py::gil_scoped_release release;
            for (int b = 0; b < nb; ++b) {
                (keys ? c.encode_k : c.encode_v)(src + size_t(b) * size_t(n) * size_t(d), n, d, dst + size_t(b) * per);
            }
        }
        if (out_arr.is_none()) return py::bytes(out);
        return out_arr;
    }, py::arg("x"), py::arg("codec"), py::arg("part"), py::arg("tier") = "", py::arg("out") = py::none(),
       "Encodes blocks of keys ('k', grouped per channel) or values ('v', per token) in the int8 / int4 KV codec");
    m.def("kv_decode", [codec_of, check_part](const py::buffer& data, int blocks, int rows, int head_dim, const std::string& codec,
                                              const std::string& part, const std::string& tier, py::object out_arr) {
        const bool keys = check_part(part);
        const KVCodecKernels& c = codec_of(tier, codec);
        if (blocks <= 0 || rows <= 0 || head_dim <= 0 || head_dim % kKVValueGroup != 0) {
            throw py::value_error("kv_decode: blocks and rows must be positive and head_dim a positive multiple of 32");
        }
        const int bits = codec == "int8" ? 8 : 4;
        const size_t per = keys ? kv_codec_k_bytes(bits, rows, head_dim) : kv_codec_v_bytes(bits, rows, head_dim);
        const py::buffer_info info = data.request();
        const size_t nbytes = size_t(info.size) * size_t(info.itemsize);
        if (info.ndim != 1 || info.strides[0] != info.itemsize) throw py::value_error("kv_decode: data must be contiguous bytes");
        if (nbytes != per * size_t(blocks)) {
            throw py::value_error("kv_decode: " + std::to_string(blocks) + " blocks of " + std::to_string(rows) + " x " +
                                  std::to_string(head_dim) + " are " + std::to_string(per * size_t(blocks)) + " bytes, got " +
                                  std::to_string(nbytes));
        }
        py::array_t<float> out;
        if (out_arr.is_none()) {
            out = py::array_t<float>({blocks, rows, head_dim});
        } else {
            if (!py::isinstance<py::array_t<float>>(out_arr)) throw py::value_error("kv_decode: out must be a float32 array");
            out = out_arr.cast<py::array_t<float>>();
            if (!(out.flags() & py::array::c_style) || !out.writeable() ||
                size_t(out.size()) != size_t(blocks) * size_t(rows) * size_t(head_dim)) {
                throw py::value_error("kv_decode: out must be a writable C-contiguous float32 array of (blocks, rows, head_dim)");
            }
        }
        float* dst = out.mutable_data();
        {
            py::gil_scoped_release release;
            const auto* src = static_cast<const uint8_t*>(info.ptr);
            for (int b = 0; b < blocks; ++b) {
                (keys ? c.decode_k : c.decode_v)(src + size_t(b) * per, rows, head_dim, dst + size_t(b) * size_t(rows) * size_t(head_dim));
            }
        }
        return out;
    }, py::arg("data"), py::arg("blocks"), py::arg("rows"), py::arg("head_dim"), py::arg("codec"), py::arg("part"),
       py::arg("tier") = "", py::arg("out") = py::none(), "Decodes what kv_encode wrote (into `out` when given)");
    m.def("_crc32c_portable", crc_of(crc32c_portable), py::arg("data"), py::arg("value") = 0);
#if defined(NLM_HAVE_X86_KERNELS)
    m.def("_crc32c_sse42", [crc_of](const py::buffer& data, uint32_t value) {
        if (!cpu_features().sse42) throw py::value_error("crc32c: this CPU has no SSE4.2");
        return crc_of(crc32c_sse42)(data, value);
    }, py::arg("data"), py::arg("value") = 0);
    m.def("_crc32c_avx512", [crc_of](const py::buffer& data, uint32_t value) {
        const CpuFeatures& f = cpu_features();
        if (!(f.sse42 && f.avx512f && f.vpclmulqdq)) throw py::value_error("crc32c: this CPU has no AVX-512 VPCLMULQDQ");
        return crc_of(crc32c_avx512)(data, value);
    }, py::arg("data"), py::arg("value") = 0);
#endif

    // Sampling over a step's logits (sample/sample.h); the policy is in nlm_native.sampling.
    py::module_ sm = m.def_submodule("sampling", "One token per row of logits, and log-probabilities");
    sm.def(
        "sample_rows",
        [](const F32Array& x, const F32Array& temperature, const I32Array& top_k, const F32Array& top_p,
           const F32Array& min_p, const py::array_t<double, py::array::c_style | py::array::forcecast>& u,
           int n_threads) {
            if (x.ndim() != 2) throw py::value_error("sample_rows: logits must be (rows, n_vocab)");
            const int64_t R = x.shape(0), V = x.shape(1);
            for (const py::array* a : {static_cast<const py::array*>(&temperature), static_cast<const py::array*>(&top_k),
                                       static_cast<const py::array*>(&top_p), static_cast<const py::array*>(&min_p),
                                       static_cast<const py::array*>(&u)}) {
                if (a->ndim() != 1 || a->shape(0) != R) {
                    throw py::value_error("sample_rows: every parameter array needs one value per row (" +
                                          std::to_string(R) + ")");
                }
            }
            if (V <= 0) throw py::value_error("sample_rows: the rows are empty");
            std::vector<SampleRow> rows(static_cast<size_t>(R));
            for (int64_t r = 0; r < R; ++r) {
                SampleRow& p = rows[size_t(r)];
                p.temperature = temperature.data()[r];
                p.top_k = top_k.data()[r];
                p.top_p = top_p.data()[r];
                p.min_p = min_p.data()[r];
                p.u = u.data()[r];
                if (!(p.temperature >= 0.0f) || !(p.top_p > 0.0f && p.top_p <= 1.0f) ||
                    !(p.min_p >= 0.0f && p.min_p <= 1.0f) || !(p.u >= 0.0 && p.u < 1.0)) {
                    throw py::value_error("sample_rows: row " + std::to_string(r) +
                                          " has a temperature < 0, top_p outside (0, 1], min_p outside [0, 1] or "
                                          "u outside [0, 1)");
                }
            }
            py::array_t<int32_t> tokens(R);
            int32_t* t = tokens.mutable_data();
            {
                py::gil_scoped_release release;
                run_on_compute_thread([&] { sample_rows(x.data(), R, V, rows.data(), t, std::max(1, n_threads)); });
            }
            return tokens;
        },
        py::arg("logits"), py::arg("temperature"), py::arg("top_k"), py::arg("top_p"), py::arg("min_p"), py::arg("u"),
        py::arg("n_threads") = 1, "One token per row of processed logits (-inf: masked)");
    sm.def(
        "distribution",
        [](const F32Array& x, float temperature, int top_k, float top_p, float min_p) {
            if (x.ndim() != 1 || x.shape(0) == 0) throw py::value_error("distribution: logits must be one non-empty row");
            SampleRow p;
            p.temperature = temperature;
            p.top_k = top_k;
            p.top_p = top_p;
            p.min_p = min_p;
            std::vector<int32_t> ids;
            std::vector<double> probs;
            sample_distribution(x.data(), x.shape(0), p, ids, probs);
            py::array_t<int32_t> i(py::ssize_t(ids.size()));
            py::array_t<double> q(py::ssize_t(probs.size()));
            std::copy(ids.begin(), ids.end(), i.mutable_data());
            std::copy(probs.begin(), probs.end(), q.mutable_data());
            return py::make_tuple(i, q);
        },
        py::arg("logits"), py::arg("temperature"), py::arg("top_k"), py::arg("top_p"), py::arg("min_p"),
        "(candidate ids, probabilities) one row is sampled from, in sampling order");
    sm.def(
        "apply_bitmask",
        [](py::array_t<float, py::array::c_style>& x, const py::array_t<int32_t, py::array::c_style>& bits) {
            if (x.ndim() != 1 || bits.ndim() != 1) throw py::value_error("apply_bitmask: x and bits must be 1-D");
            if (!x.writeable()) throw py::value_error("apply_bitmask: x must be writeable");
            apply_bitmask(x.mutable_data(), x.shape(0), reinterpret_cast<const uint32_t*>(bits.data()), bits.shape(0));
        },
        py::arg("x"), py::arg("bits"), "x[i] = -inf where bit i of the mask is 0 (in place)");
    sm.def(
        "logprob_rows",
        [](const F32Array& x, const std::optional<I32Array>& tokens, int k, int n_threads) {
            if (x.ndim() != 2 || x.shape(1) == 0) throw py::value_error("logprob_rows: logits must be (rows, n_vocab)");
            const int64_t R = x.shape(0), V = x.shape(1);
            if (k < 0) throw py::value_error("logprob_rows: k must be >= 0");
            if (tokens) {
                if (tokens->ndim() != 1 || tokens->shape(0) != R) {
                    throw py::value_error("logprob_rows: tokens needs one id per row");
                }
                for (int64_t r = 0; r < R; ++r) {
                    const int32_t t = tokens->data()[r];
                    if (t < 0 || t >= V) {
                        throw py::value_error("logprob_rows: token id " + std::to_string(t) + " of row " +
                                              std::to_string(r) + " is outside the vocabulary (" + std::to_string(V) + ")");
                    }
                }
            }
            py::array_t<float> lp(R);
            py::array_t<int32_t> ids({R, int64_t(k)});
            py::array_t<float> tops({R, int64_t(k)});
            py::array_t<double> lse(R);
            const int32_t* tk = tokens ? tokens->data() : nullptr;
            float* lpp = lp.mutable_data();
            int32_t* idp = ids.mutable_data();
            float* tpp = tops.mutable_data();
            double* lsep = lse.mutable_data();
            {
                py::gil_scoped_release release;
                run_on_compute_thread([&] { logprob_rows(x.data(), R, V, tk, k, lpp, idp, tpp, lsep, std::max(1, n_threads)); });
            }
            return py::make_tuple(lp, ids, tops, lse);
        },
        py::arg("logits"), py::arg("tokens"), py::arg("k"), py::arg("n_threads") = 1,
        "(log-probability of tokens[r], top-k ids, top-k log-probabilities, log-sum-exp) per row");

    // Kernel entry points for tests and benchmarks.
    py::module_ k = m.def_submodule("kernels", "Quantization kernels, exposed for tests and benchmarks");
    k.def(
        "type_info",
        [](uint32_t type) {
            const TypeTraits& t = traits_or_throw(type);
            return py::make_tuple(t.name, t.block_size, t.type_size);
        },
        py::arg("type_id"), "(name, block_size, type_size) of a ggml type id");
    k.def(
        "dequantize_ref",
        [](uint32_t type, const U8Array& data, int64_t n) {
            const TypeTraits& t = traits_or_throw(type);
            check_rows(t, data, 1, n);
            const U8Array a = aligned(data);
            py::array_t<float> out(n);
            float* dst = out.mutable_data();
            const uint8_t* src = a.data();
            py::gil_scoped_release release;
            t.dequantize_ref(src, dst, n);
            return out;
        },
        py::arg("type_id"), py::arg("data"), py::arg("n"), "Scalar reference dequantization of n elements");
    k.def(
        "vec_dot_ref",
        [](uint32_t type, const U8Array& data, const F32Array& x) {
            const TypeTraits& t = traits_or_throw(type);
            check_rows(t, data, 1, x.size());
            const U8Array a = aligned(data);
            const uint8_t* w = a.data();
            const float* px = x.data();
            py::gil_scoped_release release;
            return t.vec_dot_ref(w, px, x.size());
        },
        py::arg("type_id"), py::arg("data"), py::arg("x"), "Scalar reference dot product of one weight row with x");
    k.def(
        "matmul",
        [](uint32_t type, const U8Array& data, int64_t rows, int64_t cols, const F32Array& x, int n_threads,
           const std::string& tier) {
            const TypeTraits& t = traits_or_throw(type);
            check_rows(t, data, rows, cols);
            if (x.ndim() != 2 || x.shape(1) != cols) throw py::value_error("x must have shape (m, cols)");
            const KernelSet* ks = tier_or_throw(tier);
            const U8Array a = aligned(data);
            const int64_t mm = x.shape(0);
            py::array_t<float> out({mm, rows});
            float* dst = out.mutable_data();
            const float* px = x.data();
            if (n_threads <= 0) n_threads = omp_get_num_procs();
            py::gil_scoped_release release;
            WeightView w{a.data(), &t, type, rows, cols, row_bytes(t, cols)};
            const std::unique_ptr<PackedWeights> packed = pack_for(ks, type, a.data(), rows, cols);
            w.packed = packed.get();
            run_on_compute_thread([&] {
                if (ks == nullptr) {
                    matmul_ref(w, px, mm, dst, n_threads);
                } else {
                    matmul(w, px, mm, dst, n_threads, ks);
                }
            });
            return out;
        },
        py::arg("type_id"), py::arg("data"), py::arg("rows"), py::arg("cols"), py::arg("x"), py::arg("n_threads") = 0,
        py::arg("tier") = "",
        "y (m, rows) = x (m, cols) @ W^T as the engine computes it on a tier (repacked where the tier packs the "
        "format); tier '' = active, 'ref' = dequantize + float");
    k.def(
        "vec_dot",
        [](uint32_t type, const U8Array& data, const F32Array& x, const std::string& tier) {
            const TypeTraits& t = traits_or_throw(type);
            check_rows(t, data, 1, x.size());
            const KernelSet* ks = tier_or_throw(tier);
            if (ks == nullptr) throw py::value_error("vec_dot needs a SIMD or generic tier, not 'ref'");
            const U8Array a = aligned(data);
            const int64_t n = x.size();
            if (!uses_q8_activations(type)) return ks->f[type](a.data(), x.data(), n);
            Q8Buffer q;
            q.quantize(x.data(), 1, n, q8_mode_for(type), 1);
            const Q8Row row = q.row(0);
            if (const std::unique_ptr<PackedWeights> p = pack_for(ks, type, a.data(), 1, n)) {
                float y = 0.0f;
                ks->packed(*p, &row, 1, &y, 1, 0, p->groups);  // one row: the tail of a row group
                return y;
            }
            return ks->q8[type](a.data(), row, n);
        },
        py::arg("type_id"), py::arg("data"), py::arg("x"), py::arg("tier") = "",
        "One weight row times x with a tier's kernel (quantized formats see x quantized to Q8)");
    k.def(
        "quantize_q8",
        [](const F32Array& x, const std::string& mode) {
            const int64_t n = x.size();
            if (mode != "q8_0" && mode != "q8_K") throw py::value_error("mode must be 'q8_0' or 'q8_K'");
            const Q8Mode md = mode == "q8_0" ? Q8Mode::Q8_0 : Q8Mode::Q8_K;
            const int span = md == Q8Mode::Q8_0 ? QK8 : 256;
            if (x.ndim() != 1 || n % span != 0) {
                throw py::value_error("x must be 1-D with a multiple of " + std::to_string(span) + " values");
            }
            py::array_t<int8_t> qs(n);
            py::array_t<float> d(n / QK8), s(n / QK8), dl(n / 4);
            py::array_t<int32_t> sl(n / 4);
            quantize_row_q8(x.data(), n, md, qs.mutable_data(), d.mutable_data(), s.mutable_data(), dl.mutable_data(),
                            sl.mutable_data());
            return py::make_tuple(qs, d, s, dl, sl);
        },
        py::arg("x"), py::arg("mode") = "q8_0",
        "(codes, block scales, block sums * scale, lane scales, lane sums) of x quantized to Q8 ('q8_0' or 'q8_K')");
    k.def("f32_to_f16_bits", [](float f) { return f32_to_fp16(f); }, py::arg("x"), "float -> half bits (RNE)");
    // A tier's attention and conversion kernels ('ref' has none of its own: it uses generic's).
    auto attn_tier = [](const std::string& tier) -> const KernelSet& {
        const KernelSet* ks = tier_or_throw(tier);
        return ks != nullptr ? *ks : kernels_generic();
    };
    k.def(
        "attn_scores",
        [attn_tier](const F32Array& q, const F32Array& kk, float scale, const std::string& tier) {
            if (q.ndim() != 2 || kk.ndim() != 2 || q.shape(1) != kk.shape(1)) {
                throw py::value_error("q must be (nh, d) and k (n, d) with the same d");
            }
            const KernelSet& ks = attn_tier(tier);
            const int nh = int(q.shape(0)), n = int(kk.shape(0)), d = int(q.shape(1));
            py::array_t<float> s({nh, n});
            ks.attn_scores(q.data(), nh, kk.data(), n, d, scale, s.mutable_data(), n);
            return s;
        },
        py::arg("q"), py::arg("k"), py::arg("scale"), py::arg("tier") = "",
        "s (nh, n) = scale * q k^T with a tier's attention kernel");
    k.def(
        "attn_values",
        [attn_tier](const F32Array& p, const F32Array& v, const F32Array& out, const std::string& tier) {
            if (p.ndim() != 2 || v.ndim() != 2 || out.ndim() != 2 || p.shape(1) != v.shape(0) ||
                out.shape(0) != p.shape(0) || out.shape(1) != v.shape(1)) {
                throw py::value_error("p must be (nh, n), v (n, d) and out (nh, d)");
            }
            const KernelSet& ks = attn_tier(tier);
            py::array_t<float> o({out.shape(0), out.shape(1)});
            std::memcpy(o.mutable_data(), out.data(), size_t(out.size()) * sizeof(float));
            ks.attn_values(p.data(), p.shape(1), int(p.shape(0)), v.data(), int(v.shape(0)), int(v.shape(1)),
                           o.mutable_data());
            return o;
        },
        py::arg("p"), py::arg("v"), py::arg("out"), py::arg("tier") = "",
        "out + p v (nh, d) with a tier's attention kernel");
    k.def(
        "softmax",
        [attn_tier](const F32Array& x, const std::string& tier) {
            py::array_t<float> e(x.size());
            std::memcpy(e.mutable_data(), x.data(), size_t(x.size()) * sizeof(float));
            const float sum = attn_tier(tier).softmax(e.mutable_data(), x.size());
            return py::make_tuple(e, sum);
        },
        py::arg("x"), py::arg("tier") = "", "(exp(x - max x), their sum) with a tier's softmax kernel");
    k.def(
        "f32_to_f16",
        [attn_tier](const F32Array& x, const std::string& tier) {
            py::array_t<uint16_t> h(x.size());
            attn_tier(tier).f32_to_f16(x.data(), h.mutable_data(), x.size());
            return h;
        },
        py::arg("x"), py::arg("tier") = "", "float -> half bits (round to nearest even) with a tier's kernel");
    k.def(
        "f16_to_f32",
        [attn_tier](const py::array_t<uint16_t, py::array::c_style | py::array::forcecast>& h, const std::string& tier) {
            py::array_t<float> x(h.size());
            attn_tier(tier).f16_to_f32(h.data(), x.mutable_data(), h.size());
            return x;
        },
        py::arg("h"), py::arg("tier") = "", "half bits -> float with a tier's kernel");
    py::class_<PyPacked>(k, "PackedMatrix", "Weights repacked for a tier's packed kernel")
        .def_property_readonly("rows", [](const PyPacked& p) { return p.w->rows; })
        .def_property_readonly("cols", [](const PyPacked& p) { return p.w->cols; })
        .def_property_readonly("group_rows", [](const PyPacked& p) { return p.w->fmt.rows; })
        .def_property_readonly("tier", [](const PyPacked& p) { return std::string(p.ks->name); })
        .def_property_readonly("n_bytes", [](const PyPacked& p) { return p.w->n_bytes(); })
        .def(
            "matmul",
            [](const PyPacked& p, const F32Array& x, int n_threads) {
                if (x.ndim() != 2 || x.shape(1) != p.w->cols) throw py::value_error("x must have shape (m, cols)");
                const int64_t mm = x.shape(0);
                py::array_t<float> out({mm, p.w->rows});
                float* dst = out.mutable_data();
                const float* px = x.data();
                if (n_threads <= 0) n_threads = omp_get_num_procs();
                py::gil_scoped_release release;
                run_on_compute_thread([&] { matmul_packed(*p.w, px, mm, dst, n_threads, *p.ks); });
                return out;
            },
            py::arg("x"), py::arg("n_threads") = 0, "y (m, rows) = x (m, cols) @ W^T with the tier's packed kernel");
    k.def(
        "pack",
        [](uint32_t type, const U8Array& data, int64_t rows, int64_t cols, const std::string& tier) {
            const TypeTraits& t = traits_or_throw(type);
            check_rows(t, data, rows, cols);
            const KernelSet* ks = tier_or_throw(tier);
            if (ks == nullptr || ks->packed == nullptr) {
                throw py::value_error("kernel tier '" + std::string(ks ? ks->name : "ref") + "' has no packed kernel");
            }
            PackFormat f;
            if (!pack_format(type, ks->pack_rows, ks->pack_signed_bytes, &f)) {
                throw py::value_error(std::string(t.name) + " has no packed form");
            }
            const U8Array a = aligned(data);
            const uint8_t* src = a.data();
            py::gil_scoped_release release;
            return PyPacked{pack_weights(type, src, rows, cols, ks->pack_rows, ks->pack_signed_bytes), ks};
        },
        py::arg("type_id"), py::arg("data"), py::arg("rows"), py::arg("cols"), py::arg("tier") = "",
        "Repack a quantized matrix for a tier's packed kernel ('' = the active tier)");
    k.def(
        "read_bandwidth_gbps",
        [](size_t bytes, int n_threads, int reps) {
            py::gil_scoped_release release;
            return read_bandwidth_gbps(bytes, n_threads, reps);
        },
        py::arg("bytes") = size_t(1) << 30, py::arg("n_threads") = 2, py::arg("reps") = 5,
        "Memory read bandwidth (GB/s): best of reps passes over a buffer of `bytes`");
    k.def("tiers", []() {
        std::vector<std::string> names{"ref"};
        for (const KernelSet* ks : available_kernel_sets()) names.emplace_back(ks->name);
        return names;
    }, "Kernel tiers this CPU can run: 'ref', 'generic', then SIMD tiers");

    m.def("cpu_features", []() {
        const CpuFeatures& f = cpu_features();
        py::dict d;
        d["avx2"] = f.avx2; d["fma"] = f.fma; d["f16c"] = f.f16c;
        d["avx512f"] = f.avx512f; d["avx512bw"] = f.avx512bw; d["avx512vl"] = f.avx512vl; d["avx512dq"] = f.avx512dq;
        d["avx512vnni"] = f.avx512vnni; d["avx512bf16"] = f.avx512bf16; d["avxvnni"] = f.avxvnni;
        d["amx_tile"] = f.amx_tile; d["amx_bf16"] = f.amx_bf16; d["amx_int8"] = f.amx_int8;
        d["amx_usable"] = f.amx_usable; d["neon"] = f.neon; d["sse42"] = f.sse42; d["pclmul"] = f.pclmul; d["vpclmulqdq"] = f.vpclmulqdq;
        py::list tiers;
        for (const KernelSet* ks : available_kernel_sets()) tiers.append(ks->name);
        d["kernel_tiers"] = tiers;
        d["kernels"] = active_kernels().name;
        return d;
    }, "CPU features detected at load and the kernel tier in use");

    py::class_<PyModel>(m, "Model")
        .def(py::init([](const std::string& path, int n_ctx, int kv_blocks, int block_tokens, int n_threads,
                         const std::string& kernels, const std::string& kv_type) {
                 const KernelSet* ks = tier_or_throw(kernels);
                 const KVType type = kv_type_or_throw(kv_type);
                 auto pm = std::make_unique<PyModel>();
                 py::gil_scoped_release release;
                 run_on_compute_thread([&] {
                     pm->model = std::make_unique<Model>(path, n_ctx, kv_blocks, block_tokens, n_threads, ks, type);
                 });
                 return pm;
             }),
             py::arg("path"), py::arg("n_ctx") = 4096, py::arg("kv_blocks") = 0, py::arg("block_tokens") = 32,
             py::arg("n_threads") = 0, py::arg("kernels") = "", py::arg("kv_type") = "f16")
        .def_property_readonly("kv_type", [](PyModel& s) { return kv_type_name(s.model->kv_type()); })
        .def("memory", [](PyModel& s) {
            Model::Memory mem;
            {
                std::lock_guard<std::mutex> lock(s.mu);
                mem = s.model->memory();
            }
            py::dict d;
            d["weights_mapped_bytes"] = mem.weights_mapped;
            d["weights_repacked_bytes"] = mem.weights_repacked;
            d["weights_copied_bytes"] = mem.weights_copied;
            d["kv_pool_bytes"] = mem.kv_pool;
            d["kv_used_bytes"] = mem.kv_used;
            d["kv_block_bytes"] = mem.kv_block;
            d["kv_bytes_per_token"] = mem.kv_per_token;
            d["kv_staging_bytes"] = mem.kv_staging;
            d["scratch_bytes"] = mem.scratch;
            return d;
        }, "Bytes held by the model, by kind")
        .def("read_kv", [](PyModel& s, int seq, int layer, int token, bool values) {
            const HParams& h = s.model->hparams();
            py::array_t<float> out({h.n_head_kv, h.head_dim});
            std::lock_guard<std::mutex> lock(s.mu);
            s.model->read_kv(seq, layer, token, values, out.mutable_data());
            return out;
        }, py::arg("seq"), py::arg("layer"), py::arg("token"), py::arg("values") = false,
           "Cached keys (or values) of one token of a sequence at one layer, as float32 (n_head_kv, head_dim)")
        .def("export_block", [](PyModel& s, int seq, int index) {
            const size_t n = s.model->pool().block_bytes();
            std::string buf(n, '\0');
            {
                std::lock_guard<std::mutex> lock(s.mu);
                s.model->export_block(seq, index, reinterpret_cast<uint8_t*>(buf.data()));
            }
            return py::bytes(buf);
        }, py::arg("seq"), py::arg("index"), "The raw KV bytes of a full block of a sequence (kv/pool.h layout)")
        .def("append_block", [](PyModel& s, int seq, const py::bytes& data) {
            const std::string_view v(data);
            const size_t n = s.model->pool().block_bytes();
            if (v.size() != n) {
                throw py::value_error("append_block: a block is " + std::to_string(n) + " bytes here, got " +
                                      std::to_string(v.size()));
            }
            std::lock_guard<std::mutex> lock(s.mu);
            s.model->append_block(seq, reinterpret_cast<const uint8_t*>(v.data()));
        }, py::arg("seq"), py::arg("data"), "Append a block of raw KV bytes to a sequence of whole blocks")
        .def_property_readonly("kernels", [](PyModel& s) { return s.model->kernels_name(); })
        .def("gguf", [](PyModel& s) { return file_to_python(s.model->file()); })
        .def_property_readonly("hparams",
                               [](PyModel& s) {
                                   const HParams& h = s.model->hparams();
                                   py::dict d;
                                   d["arch"] = h.arch;
                                   d["n_vocab"] = h.n_vocab;
                                   d["n_ctx_train"] = h.n_ctx_train;
                                   d["n_embd"] = h.n_embd;
                                   d["n_layer"] = h.n_layer;
                                   d["n_ff"] = h.n_ff;
                                   d["n_head"] = h.n_head;
                                   d["n_head_kv"] = h.n_head_kv;
                                   d["head_dim"] = h.head_dim;
                                   d["n_rot"] = h.n_rot;
                                   d["rms_eps"] = h.rms_eps;
                                   d["rope_base"] = h.rope_base;
                                   d["rope_scale"] = h.rope_scale;
                                   d["rope_order"] = h.rope_order == RopeOrder::NeoX ? "neox" : "normal";
                                   return d;
                               })
        .def_property_readonly("n_ctx", [](PyModel& s) { return s.model->n_ctx(); })
        .def_property("n_threads", [](PyModel& s) { return s.model->n_threads(); },
                      [](PyModel& s, int n) {
                          std::lock_guard<std::mutex> lock(s.mu);
                          s.model->set_n_threads(n);
                      })
        .def_property_readonly("block_tokens", [](PyModel& s) { return s.model->pool().shape().block_tokens; })
        .def_property_readonly("kv_blocks", [](PyModel& s) { return s.model->pool().n_blocks(); })
        .def_property_readonly("kv_free_blocks", [](PyModel& s) {
            std::lock_guard<std::mutex> lock(s.mu);
            return s.model->pool().n_free();
        })
        .def("new_sequence", [](PyModel& s) {
            std::lock_guard<std::mutex> lock(s.mu);
            return s.model->new_sequence();
        })
        .def("fork", [](PyModel& s, int seq) {
            std::lock_guard<std::mutex> lock(s.mu);
            return s.model->fork(seq);
        }, py::arg("seq"))
        .def("free_sequence", [](PyModel& s, int seq) {
            std::lock_guard<std::mutex> lock(s.mu);
            s.model->free_sequence(seq);
        }, py::arg("seq"))
        .def("truncate", [](PyModel& s, int seq, int n) {
            std::lock_guard<std::mutex> lock(s.mu);
            s.model->truncate(seq, n);
        }, py::arg("seq"), py::arg("n_tokens"))
        .def("sequence_length", [](PyModel& s, int seq) {
            std::lock_guard<std::mutex> lock(s.mu);
            return s.model->sequence_length(seq);
        }, py::arg("seq"))
        .def("sequence_ids", [](PyModel& s) {
            std::lock_guard<std::mutex> lock(s.mu);
            return s.model->sequence_ids();
        })
        .def("forward", &py_forward, py::arg("tokens"), py::arg("positions"), py::arg("seq_ids"), py::arg("logit_rows"),
             py::arg("out") = py::none(),
             "Run one batch; returns float32 logits (len(logit_rows), n_vocab), written into `out` when given. "
             "GIL released while computing.")
        .def("_forward_counting_allocations", &py_forward_counting_allocations, py::arg("tokens"), py::arg("positions"),
             py::arg("seq_ids"), py::arg("logit_rows"), py::arg("out"),
             "Test hook: forward(), returning the heap allocations the core made (-1 without the malloc shim)");
}
