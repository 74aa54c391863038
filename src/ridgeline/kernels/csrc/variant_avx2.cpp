// The avx2 variant: the whole extension as one translation unit, compiled with this variant's flags
// (see setup.py), so that no code of one instruction set can leak into another's module.
#define RL_MODULE _native_avx2
#include "isa_avx2.h"
#include "module.cpp"
