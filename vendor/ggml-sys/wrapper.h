#include "ggml.h"
#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "gguf.h"
#ifdef NIJIGEN_CUDA
#include "ggml-cuda.h"
#endif
