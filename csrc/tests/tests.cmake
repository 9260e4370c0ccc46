# Standalone C++ kernel tests, included by the top-level CMakeLists.txt in the sanitizer build
# (RBFKERN_SANITIZE=ON; run by .ci/sanitize). They link the kernel sources directly, no Python.
add_executable(test_rbf_cpp ${CMAKE_CURRENT_LIST_DIR}/test_rbf_cpp.cpp ${CMAKE_CURRENT_SOURCE_DIR}/csrc/cpu/rbf.cpp
               ${CMAKE_CURRENT_SOURCE_DIR}/csrc/cpu/isa.cpp)
target_include_directories(test_rbf_cpp PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/csrc)
# (RBFKERN_SAN_FLAGS has -O1; the test sizes its problems for the sanitizers)
target_compile_options(test_rbf_cpp PRIVATE ${RBFKERN_SAN_FLAGS} -Wno-psabi)  # psabi: as for _C
target_link_options(test_rbf_cpp PRIVATE -fsanitize=address,undefined)
if(OpenMP_CXX_FOUND)
  target_link_libraries(test_rbf_cpp PRIVATE OpenMP::OpenMP_CXX)
endif()
