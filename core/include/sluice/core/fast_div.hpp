// Division of 64-bit positions by a ring's capacity without a DIV instruction:
// a multiply by a precomputed reciprocal and a shift (the branchful unsigned
// scheme of libdivide, after Granlund and Montgomery). The hot path needs the
// slot and lap of a position on every attempt, and a 64-bit DIV costs more than
// the rest of that arithmetic together. Exact for every n and every d >= 1
// (FastDivision.AgreesWithDivisionEverywhere in tests/core/test_codec.cpp checks it against '/' and '%').
#pragma once
#include <cstdint>

namespace sluice::core {

__extension__ using FastDivWide = unsigned __int128;

class FastDiv {
 public:
  FastDiv() : FastDiv(1) {}
  explicit FastDiv(uint32_t d) : d_(d ? d : 1) {
    const uint32_t log2 = 31 - uint32_t(__builtin_clz(d_));
    shift_ = uint8_t(log2);
    if ((d_ & (d_ - 1)) == 0) return;  // a power of two: a shift alone (magic_ 0)
    // m = floor(2^(64 + log2) / d) fits in 64 bits because d > 2^log2.
    const FastDivWide num = static_cast<FastDivWide>(1) << (64 + log2);
    uint64_t m = uint64_t(num / d_);
    const uint64_t rem = uint64_t(num % d_);
    if (d_ - rem >= (uint64_t(1) << log2)) {
      // m + 1 is one bit short: use 2m (+1) and fold the 65th bit in with an add.
      m += m;
      const uint64_t twice = rem + rem;
      if (twice >= d_ || twice < rem) m += 1;
      add_ = true;
    }
    magic_ = m + 1;
  }

  uint32_t divisor() const { return d_; }
  uint64_t quot(uint64_t n) const {
    if (magic_ == 0) return n >> shift_;
    const uint64_t q = uint64_t((static_cast<FastDivWide>(magic_) * n) >> 64);
    return add_ ? (((n - q) >> 1) + q) >> shift_ : q >> shift_;
  }
  uint64_t rem(uint64_t n, uint64_t q) const { return n - q * d_; }  // q = quot(n)

 private:
  uint64_t magic_ = 0;
  uint32_t d_ = 1;
  uint8_t shift_ = 0;
  bool add_ = false;
};

}  // namespace sluice::core
