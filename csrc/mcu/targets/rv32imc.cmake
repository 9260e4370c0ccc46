# rv32imc (picolibc semihost crt0, QEMU virt -bios none). See shared/MCU.md section 4.
set(RBFK_ARCH_FLAGS "-march=rv32imc -mabi=ilp32")
include(${CMAKE_CURRENT_LIST_DIR}/common-rv32.cmake)
