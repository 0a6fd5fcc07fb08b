// Exception types of the core; the bindings map them to Python exceptions.
#pragma once

#include <stdexcept>
#include <string>

namespace nlm {

// A GGUF file that cannot be read: truncated, hostile, or of an unsupported kind.
// Python: nlm_native.GGUFError (a ValueError).
struct GGUFError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// A model whose metadata or tensors do not describe a supported network.
// Python: nlm_native.ModelError (a ValueError).
struct ModelError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// A request the engine cannot serve: bad token id, unknown sequence, KV pool full.
// Python: ValueError (bad arguments) and nlm_native.KVCacheFull (pool exhausted, a RuntimeError).
struct KVCacheFull : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// A forward pass whose logits came out NaN or infinite (the weights or the
// activations overflow); the batch is undone. Python: nlm_native.NumericError
// (an ArithmeticError).
struct NumericError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

}  // namespace nlm
