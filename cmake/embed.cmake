# Turns a text file into a C source defining a NUL-terminated byte array.
# Usage: cmake -DIN=file -DOUT=file.c -DNAME=symbol -P embed.cmake
file(READ "${IN}" hex HEX)
string(LENGTH "${hex}" n)
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," body "${hex}")
math(EXPR bytes "${n} / 2")
file(WRITE "${OUT}" "/* generated from ${IN} */\n#include <stddef.h>\nconst char ${NAME}[] = {${body}0};\nconst size_t ${NAME}_len = ${bytes};\n")
