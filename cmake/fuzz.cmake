# OWL_FUZZ=ON (clang only): the libFuzzer harness tests/fuzz/fuzz_gguf.cpp, with the runtime built under ASan +
# UBSan and libFuzzer's coverage instrumentation. Every UB report aborts, so the fuzzer keeps it as a crash.
# tests/fuzz/build.sh is the one-command way to build it.
function(owl_fuzz_harness)
  if(NOT CMAKE_CXX_COMPILER_ID MATCHES "Clang")
    message(FATAL_ERROR "OWL_FUZZ=ON needs clang with libFuzzer (-DCMAKE_CXX_COMPILER=clang++)")
  endif()
  set(san -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer)
  target_compile_options(owl PRIVATE ${san} -fsanitize=fuzzer-no-link)
  add_executable(fuzz_gguf ${CMAKE_CURRENT_SOURCE_DIR}/tests/fuzz/fuzz_gguf.cpp)
  target_link_libraries(fuzz_gguf PRIVATE owl)
  target_include_directories(fuzz_gguf PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/owl_cpp/src)  # unicode.h
  target_compile_options(fuzz_gguf PRIVATE ${san} -fsanitize=fuzzer)
  target_link_options(fuzz_gguf PRIVATE ${san} -fsanitize=fuzzer)
endfunction()
