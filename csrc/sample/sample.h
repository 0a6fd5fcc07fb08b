// Sampling over a whole step's logits: one token per row, and the log-probabilities callers
// asked for. The policy (which rows, which parameters, the random numbers, penalties and
// grammar masks) lives in Python (nlm_native.sampling); this is the O(n_vocab) part.
//
// Per row with temperature T > 0 (the order Hugging Face and vLLM use):
//   w_i = exp((x_i - max x) / T), 0 for x_i = -inf (masked)
//   top_k > 0: keep the k largest w (ties: lower id first)
//   top_p < 1: of those, most likely first, the shortest prefix whose sum reaches top_p * sum
//   min_p > 0: keep w_i >= min_p * max w
//   the token: the first candidate whose running sum of w exceeds u * (sum of kept w)
// Candidates are in id order when no truncation applies, otherwise most likely first.
// T == 0 is the argmax (ties: the lowest id).
#pragma once

#include <cstdint>
#include <vector>

namespace nlm {

struct SampleRow {
    float temperature = 1.0f;  // 0: greedy
    int32_t top_k = 0;         // <= 0: off
    float top_p = 1.0f;        // 1: off
    float min_p = 0.0f;        // 0: off
    double u = 0.0;            // uniform in [0, 1): the row's random number
};

// tokens[r] for every row of x (R, V). Throws std::invalid_argument naming the row when every
// logit of a row is -inf or NaN.
void sample_rows(const float* x, int64_t R, int64_t V, const SampleRow* rows, int32_t* tokens, int n_threads);

// The candidates and their probabilities (summing to 1) one row is sampled from, in sampling order.
void sample_distribution(const float* x, int64_t V, const SampleRow& row, std::vector<int32_t>& ids,
                         std::vector<double>& probs);

// Sets x[i] = -inf where bit i of the mask (32 per word, least significant first, as llguidance
// writes it) is 0; ids from 32 * n_words on are all masked.
void apply_bitmask(float* x, int64_t V, const uint32_t* bits, int64_t n_words);

// Of the log-softmax of each raw row: the value at tokens[r] (when tokens is not null), and the
// k most likely (id, log-probability) pairs, most likely first (ties: lower id), into
// top_ids / top_lp (R, k). lse[r] receives the row's log-sum-exp.
void logprob_rows(const float* x, int64_t R, int64_t V, const int32_t* tokens, int k, float* token_lp,
                  int32_t* top_ids, float* top_lp, double* lse, int n_threads);

}  // namespace nlm
