// Memory read bandwidth of this machine, for benchmark reports (decode is bound by it).
#pragma once

#include <cstddef>

namespace nlm {

// Best of `reps` passes of `n_threads` threads each summing its slice of a `bytes` buffer; GB/s.
double read_bandwidth_gbps(size_t bytes, int n_threads, int reps);

}  // namespace nlm
