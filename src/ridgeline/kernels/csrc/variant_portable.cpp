// The portable variant: the whole extension as one translation unit, compiled with this variant's flags
// (see setup.py), so that no code of one instruction set can leak into another's module.
#define RL_MODULE _native_portable
#include "isa_portable.h"
#include "module.cpp"
