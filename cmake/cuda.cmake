# The CUDA backend (owl_cpp/src/cuda): built when a CUDA toolkit is found, or as OWL_CUDA says. The runtime
# library is linked statically: it finds the driver (libcuda) when first used, so a CUDA build still imports and
# runs on the CPU of a machine without a GPU or driver.
# Included at file scope (enable_language may not run inside a function).
set(OWL_CUDA AUTO CACHE STRING "Build the CUDA backend: AUTO (when a CUDA compiler is found), ON or OFF")
set_property(CACHE OWL_CUDA PROPERTY STRINGS AUTO ON OFF)
set(OWL_HAVE_CUDA OFF)
if(NOT OWL_CUDA STREQUAL "OFF")
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    # Turing (laptop RTX 20) through Hopper unless the caller chose (CMAKE_CUDA_ARCHITECTURES or CUDAARCHS).
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES AND NOT DEFINED ENV{CUDAARCHS})
      set(CMAKE_CUDA_ARCHITECTURES 75 80 86 89 90)
    endif()
    enable_language(CUDA)
    find_package(CUDAToolkit REQUIRED)
    set(OWL_HAVE_CUDA ON)
  elseif(OWL_CUDA STREQUAL "ON")
    message(FATAL_ERROR "OWL_CUDA=ON but no CUDA compiler was found (set CMAKE_CUDA_COMPILER or put nvcc on PATH)")
  else()
    message(STATUS "owl_cpp: no CUDA compiler found; building without the CUDA backend")
  endif()
endif()

function(owl_cuda_backend target)
  if(NOT OWL_HAVE_CUDA)
    return()
  endif()
  file(GLOB sources CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/owl_cpp/src/cuda/*.cu)
  target_sources(${target} PRIVATE ${sources})
  string(REPLACE ";" "," archs "${CMAKE_CUDA_ARCHITECTURES}")
  target_compile_definitions(${target} PRIVATE OWL_HAVE_CUDA OWL_CUDA_ARCHS="${archs}")
  target_link_libraries(${target} PUBLIC CUDA::cudart_static)
  set_target_properties(${target} PROPERTIES CUDA_STANDARD 17 CUDA_STANDARD_REQUIRED ON)
  # Device code: optimised, no fast-math (the kernels must match the CPU's rounding), warnings visible.
  target_compile_options(${target} PRIVATE "$<$<COMPILE_LANGUAGE:CUDA>:-O3;-Xcompiler=-fPIC>")
  message(STATUS "owl_cpp: CUDA backend for architectures ${CMAKE_CUDA_ARCHITECTURES}")
endfunction()
