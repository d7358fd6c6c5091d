# Writes the compiled BPF object as a C++ byte array (cmake -DIN=obj -DOUT=header -P embed.cmake), so the plugin
# carries its program and needs no file beside it at run time.
file(READ "${IN}" hex HEX)
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
file(WRITE "${OUT}" "#pragma once\n// Generated from bpf/tftp_lb_tc.bpf.c by bpf/embed.cmake: do not edit.\n"
     "inline constexpr unsigned char tftp_lb_tc_object[] = {${bytes}};\n")
