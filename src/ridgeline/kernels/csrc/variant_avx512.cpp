// The avx512 variant: the whole extension as one translation unit, compiled with this variant's flags
// (see setup.py), so that no code of one instruction set can leak into another's module.
#define RL_MODULE _native_avx512
#include "isa_avx512.h"
#include "module.cpp"
