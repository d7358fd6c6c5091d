#pragma once
// Time-of-day periods of the pool service (XenDesktop 4's idle pool): peak hours and business hours on business
// days, off-hours otherwise. Pure functions of the deployment time, so the virtual clock can cross a boundary.
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace deskfarm::ddc {

enum class Period : std::uint8_t { peak, business, off_hours };
inline std::string_view period_name(Period p) {
  return p == Period::peak ? "peak" : p == Period::business ? "business" : "off_hours";
}

/// "HH:MM-HH:MM" → minutes of the day [begin, end); nullopt for another text.
inline std::optional<std::pair<int, int>> parse_range(std::string_view text) {
  auto hhmm = [](std::string_view s) -> std::optional<int> {
    if (s.size() != 5 || s[2] != ':') return std::nullopt;
    for (std::size_t i : {0u, 1u, 3u, 4u})
      if (s[i] < '0' || s[i] > '9') return std::nullopt;
    const int h = (s[0] - '0') * 10 + (s[1] - '0'), m = (s[3] - '0') * 10 + (s[4] - '0');
    if (h > 24 || m > 59 || (h == 24 && m != 0)) return std::nullopt;
    return h * 60 + m;
  };
  if (text.size() != 11 || text[5] != '-') return std::nullopt;
  auto a = hhmm(text.substr(0, 5)), b = hhmm(text.substr(6));
  if (!a || !b || *a >= *b) return std::nullopt;
  return std::pair{*a, *b};
}

/// 0 = "mon" … 6 = "sun"; nullopt for another word.
inline std::optional<int> parse_day(std::string_view d) {
  static constexpr std::string_view days[] = {"mon", "tue", "wed", "thu", "fri", "sat", "sun"};
  for (int i = 0; i < 7; ++i)
    if (days[i] == d) return i;
  return std::nullopt;
}

struct Schedule {
  std::vector<int> business_days;                  ///< 0 = Monday
  std::pair<int, int> business_hours{8 * 60, 18 * 60};
  std::vector<std::pair<int, int>> peak_hours;
  std::int64_t utc_offset_min = 0;

  template <class TimePoint>
  Period at(TimePoint t) const {
    using namespace std::chrono;
    const auto local = floor<minutes>(t) + minutes(utc_offset_min);
    const auto day = floor<days>(local);
    const int minute = static_cast<int>((local - day).count());
    const int weekday = static_cast<int>((weekday_of(day) + 6) % 7);  // 1970-01-01 was a Thursday
    bool business_day = false;
    for (int d : business_days) business_day |= d == weekday;
    if (!business_day) return Period::off_hours;
    for (const auto& [a, b] : peak_hours)
      if (minute >= a && minute < b) return Period::peak;
    if (minute >= business_hours.first && minute < business_hours.second) return Period::business;
    return Period::off_hours;
  }

 private:
  template <class Days>
  static unsigned weekday_of(Days d) {
    return static_cast<unsigned>(std::chrono::weekday(std::chrono::sys_days(std::chrono::duration_cast<std::chrono::days>(d.time_since_epoch()))).c_encoding());
  }
};

}  // namespace deskfarm::ddc
