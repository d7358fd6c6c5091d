#pragma once
// A vDisk whose boot sector writes a marker to the first serial port (COM1) and halts: what a real VM booting it
// prints proves the firmware (SeaBIOS, or iPXE's sanboot) read the disk and handed control to its code.
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace deskfarm::testing {

/// A raw disk image of `size` bytes (at least 512) whose MBR prints `marker` on COM1 (port 0x3F8), then halts.
/// 16-bit real-mode code loaded at 0:7C00, assembled here by hand, so no assembler is needed.
inline std::vector<std::byte> marker_disk(const std::string& marker, std::size_t size = 1 << 20) {
  static constexpr std::uint8_t code[] = {
      0xFA,              // cli
      0x31, 0xC0,        // xor ax, ax
      0x8E, 0xD8,        // mov ds, ax
      0xBE, 0x16, 0x7C,  // mov si, 0x7C16 (the message, right after this code)
      0xBA, 0xF8, 0x03,  // mov dx, 0x3F8 (COM1)
      0xAC,              // next: lodsb
      0x84, 0xC0,        // test al, al
      0x74, 0x03,        // jz done
      0xEE,              // out dx, al
      0xEB, 0xF8,        // jmp next
      0xF4,              // done: hlt
      0xEB, 0xFD,        // jmp done
  };
  static_assert(sizeof code == 0x16, "the message address in `mov si` is 0x7C00 + the code's size");
  if (size < 512 || sizeof code + marker.size() + 1 > 510)
    throw std::invalid_argument("marker_disk: the image needs 512 bytes at least, the marker at most 487");
  std::vector<std::byte> disk(size);
  std::memcpy(disk.data(), code, sizeof code);
  std::memcpy(disk.data() + sizeof code, marker.c_str(), marker.size() + 1);
  disk[510] = std::byte{0x55};
  disk[511] = std::byte{0xAA};
  return disk;
}

}  // namespace deskfarm::testing
