#include "bench/membw.h"

#include <omp.h>

#include <cstdint>
#include <cstring>
#include <memory>

namespace nlm {

double read_bandwidth_gbps(size_t bytes, int n_threads, int reps) {
    const size_t n = bytes / sizeof(uint64_t) / 64 * 64;
    std::unique_ptr<uint64_t[]> buf(new uint64_t[n]);
#pragma omp parallel for num_threads(n_threads) schedule(static)
    for (size_t i = 0; i < n; ++i) buf[i] = i;  // first touch by the thread that reads it
    double best = 0.0;
    volatile uint64_t sink = 0;
    for (int r = 0; r < reps; ++r) {
        uint64_t total = 0;
        const double t0 = omp_get_wtime();
#pragma omp parallel for num_threads(n_threads) schedule(static) reduction(+ : total)
        for (size_t i = 0; i < n; ++i) total += buf[i];
        const double dt = omp_get_wtime() - t0;
        sink = sink + total;
        if (dt > 0 && double(n * sizeof(uint64_t)) / dt / 1e9 > best) best = double(n * sizeof(uint64_t)) / dt / 1e9;
    }
    return best;
}

}  // namespace nlm
