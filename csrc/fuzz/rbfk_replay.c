/*
 * rbfk_replay.c - a main() for rbfk_fuzz.c where libFuzzer is absent (gcc): runs the harness on
 * every file named on the command line, so a corpus or a crash input replays under gcc's ASan/UBSan.
 *
 *   gcc -std=c99 -g -fsanitize=address,undefined -Icsrc/mcu -Icsrc/fuzz csrc/fuzz/rbfk_replay.c \
 *       csrc/fuzz/rbfk_fuzz.c csrc/mcu/rbfk_*.c -lm -o rbfk_replay && ./rbfk_replay CORPUS/...
 *
 * tests/test_sanitize_stage.py uses it; CI fuzzes with the libFuzzer build (.ci/sanitize).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int main(int argc, char **argv)
{
    int i;
    for (i = 1; i < argc; ++i) {
        FILE *f = fopen(argv[i], "rb");
        uint8_t *buf;
        long n;
        if (f == NULL || fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
            perror(argv[i]);
            return 2;
        }
        buf = malloc(n > 0 ? (size_t)n : 1);
        if (buf == NULL || fread(buf, 1, (size_t)n, f) != (size_t)n) {
            perror(argv[i]);
            return 2;
        }
        fclose(f);
        LLVMFuzzerTestOneInput(buf, (size_t)n);
        free(buf);
    }
    printf("replayed %d inputs\n", argc - 1);
    return 0;
}
