#pragma once
// The XML service's documents (NFuseProtocol, POST /scripts/wpnbr.dll): the four requests a Web Interface sends to
// launch a desktop — RequestValidateCredentials, RequestAppData, RequestAddress, RequestTicket — parsed into
// structs, and their replies written (and parsed back, for clients and tests). XML goes through Poco::XML (expat)
// with external entities off; every error names what is wrong and where (line:column, or the element path).
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace deskfarm::nfuse {

inline constexpr std::string_view kPath = "/scripts/wpnbr.dll";
inline constexpr std::string_view kContentType = "text/xml";
inline constexpr std::string_view kVersion = "5.4";  ///< the version replies carry when the request gave none
inline constexpr std::size_t kMaxDocument = 64 * 1024;  ///< a larger request is refused before parsing

/// ErrorId values of replies (the protocol's own words).
inline constexpr const char* kUnspecified = "unspecified";
inline constexpr const char* kBadCredentials = "bad-credentials";
inline constexpr const char* kAccountDisabled = "account-disabled";
inline constexpr const char* kNoAvailableWorkstation = "no-available-workstation";
inline constexpr const char* kAppRemoved = "app-removed";

/// A request that cannot be answered as one of the four: malformed XML, another root, an unknown request type, a
/// missing or bad field. what() says what and where; `request_type` is the request element when it is one of the
/// four ("" otherwise), so the error reply can be its Response element.
class ProtocolError : public std::runtime_error {
 public:
  ProtocolError(std::string request_type, const std::string& message)
      : std::runtime_error(message), request_type_(std::move(request_type)) {}
  const std::string& request_type() const { return request_type_; }

 private:
  std::string request_type_;
};

struct Credentials {
  std::string user;
  std::string password;            ///< clear text (encoding "cleartext"; other encodings are refused)
  std::string domain;
  std::string domain_type = "NT";
  bool operator==(const Credentials&) const = default;
};

struct ValidateCredentials {
  Credentials credentials;
  bool operator==(const ValidateCredentials&) const = default;
};

struct AppDataRequest {
  std::string scope = "onelevel";            ///< Scope traverse: onelevel | subtree
  std::vector<std::string> desired_details;  ///< permissions, defaults, icon, icon-info, access-list, file-type
  std::string server_type = "all";           ///< win32 | x | all
  std::string client_type = "all";           ///< ica30 | rdp | content | rade | all
  std::optional<Credentials> credentials;
  std::string client_name;
  std::string client_address;
  bool operator==(const AppDataRequest&) const = default;
};

struct AddressRequest {
  std::string app_name;            ///< Name/AppName: the desktop (its InName)
  std::vector<std::string> flags;  ///< alt-addr, no-load-bias
  std::optional<Credentials> credentials;
  std::string client_name;
  std::string client_address;
  bool operator==(const AddressRequest&) const = default;
};

struct TicketRequest {
  Credentials credentials;
  std::string ticket_type = "CtxLogon";
  std::string ticket_tag;          ///< from ResponseAddress
  std::int64_t time_to_live = 3600;  ///< TimetoLive, seconds (1..86400)
  bool operator==(const TicketRequest&) const = default;
};

using Request = std::variant<ValidateCredentials, AppDataRequest, AddressRequest, TicketRequest>;

struct Document {
  std::string version;  ///< NFuseProtocol version="x.y"
  Request request;
  bool operator==(const Document&) const = default;
};

/// The request element's name of a request ("RequestTicket").
std::string request_type(const Request& r);
/// Parses a request document; throws ProtocolError.
Document parse_request(std::string_view xml);
/// Writes a request document (a client's side; tests and the logon storm use it).
std::string write_request(const Document& d);

// ---- replies ----

struct ValidateCredentialsReply {
  std::int64_t days_until_password_expiry = -1;  ///< -1: the password does not expire
  bool show_password_expiry_warning = false;
  std::string error_id;  ///< "" = valid
  bool operator==(const ValidateCredentialsReply&) const = default;
};

struct AppData {
  std::string in_name;   ///< internal name: what RequestAddress names
  std::string f_name;    ///< friendly name
  bool desktop = true;   ///< Settings appisdesktop
  bool disabled = false; ///< Settings appisdisabled
  std::string encryption = "basic";
  std::vector<std::string> users;   ///< AccessList User ("DOMAIN\\name")
  std::vector<std::string> groups;  ///< AccessList Group ("DOMAIN\\name")
  bool anonymous = false;           ///< AccessList AnonymousUser
  std::string server_type = "win32";
  std::vector<std::string> client_types = {"ica30"};
  bool operator==(const AppData&) const = default;
};

struct AppDataReply {
  std::vector<AppData> apps;
  std::string error_id;
  bool operator==(const AppDataReply&) const = default;
};

struct AddressReply {
  std::string server_address;        ///< "10.0.0.5", "10.0.0.5:1494", or a host name ("desktop-3")
  std::string address_type = "dot";  ///< dot | dot-port | dns | dns-port: address_type(server_address)
  std::string ticket_tag;
  std::string error_id;
  bool operator==(const AddressReply&) const = default;
};

struct TicketReply {
  std::string ticket;
  std::string error_id;
  bool operator==(const TicketReply&) const = default;
};

using Reply = std::variant<ValidateCredentialsReply, AppDataReply, AddressReply, TicketReply>;

/// The NFuse addresstype of `address`: "dot" (IPv4), "dot-port" (IPv4:port), "dns" (a host name), "dns-port".
std::string address_type(std::string_view address);

/// Writes the reply document (Response<Type>); an error_id writes <ErrorId> instead of the data.
std::string write_reply(const Reply& r, std::string_view version = kVersion);
/// The protocol's error reply for a request that could not be parsed: the request's Response element when its type
/// is known, else <ResponseError>; <ErrorId>unspecified</ErrorId> and <Detail> with what and where.
std::string write_error(const ProtocolError& e, std::string_view version = kVersion);

/// Parses a reply (a client's side); `detail` gets the <Detail> of an error reply. Throws ProtocolError.
Reply parse_reply(std::string_view xml, std::string* detail = nullptr);

}  // namespace deskfarm::nfuse
