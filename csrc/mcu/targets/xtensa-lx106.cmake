# Xtensa lx106 (ESP8266), Debian's gcc-xtensa-lx106: library only (compile check). Linking needs the
# soft-float routines the ESP8266 ROM provides (__addsf3, __mulsf3, ...), absent from Debian's libgcc.
# ESP32 (LX6/LX7) has no packaged toolchain; ESP32-C3 is covered by rv32imc.cmake.
set(CMAKE_SYSTEM_NAME Generic)
set(CMAKE_SYSTEM_PROCESSOR xtensa)
set(CMAKE_C_COMPILER xtensa-lx106-elf-gcc)
set(CMAKE_TRY_COMPILE_TARGET_TYPE STATIC_LIBRARY)
set(CMAKE_C_FLAGS_INIT "-mlongcalls -ffreestanding")
