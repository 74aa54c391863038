// Test-only variant: the AVX-512 code compiled against SIMDe's portable implementations of the
// AVX-512 intrinsics (RL_SIMDE), so its logic can be checked on CPUs without AVX-512. Built only when
// RIDGELINE_BUILD_AVX512_EMU=1 and the SIMDe headers are present; never selected automatically.
#define RL_MODULE _native_avx512emu
#define RL_SIMDE 1
#include "isa_avx512.h"
#include "module.cpp"
