#include "deskfarm/nfuse/nfuse.hpp"

#include <Poco/DOM/AutoPtr.h>
#include <Poco/DOM/DOMParser.h>
#include <Poco/DOM/Document.h>
#include <Poco/DOM/Element.h>
#include <Poco/DOM/Node.h>
#include <Poco/DOM/NodeList.h>
#include <Poco/SAX/AttributesImpl.h>
#include <Poco/SAX/SAXException.h>
#include <Poco/SAX/XMLReader.h>
#include <Poco/XML/XMLWriter.h>

#include <algorithm>
#include <charconv>
#include <sstream>

namespace deskfarm::nfuse {

using Poco::XML::AutoPtr;
using Poco::XML::Element;
using Poco::XML::Node;

namespace {

bool known_type(const std::string& type) {
  return type == "RequestValidateCredentials" || type == "RequestAppData" || type == "RequestAddress" || type == "RequestTicket";
}

// ---- reading ----

/// A parsed document with the path of each element for error messages.
struct Doc {
  AutoPtr<Poco::XML::Document> doc;
  Element* root = nullptr;
};

Doc load(std::string_view xml, const std::string& type_for_errors) {
  if (xml.size() > kMaxDocument)
    throw ProtocolError(type_for_errors, "document of " + std::to_string(xml.size()) + " bytes is larger than " +
                                             std::to_string(kMaxDocument) + " bytes");
  Poco::XML::DOMParser parser;
  // Nothing outside the document is read: no external DTD (NFuse.dtd), no external entities.
  parser.setFeature(Poco::XML::XMLReader::FEATURE_EXTERNAL_GENERAL_ENTITIES, false);
  parser.setFeature(Poco::XML::XMLReader::FEATURE_EXTERNAL_PARAMETER_ENTITIES, false);
  Doc d;
  try {
    d.doc = parser.parseMemory(xml.data(), xml.size());
  } catch (const Poco::XML::SAXParseException& e) {
    throw ProtocolError(type_for_errors, "malformed XML at line " + std::to_string(e.getLineNumber()) + ", column " +
                                             std::to_string(e.getColumnNumber()) + ": " + e.message());
  } catch (const Poco::Exception& e) {
    throw ProtocolError(type_for_errors, "malformed XML: " + e.displayText());
  }
  d.root = d.doc->documentElement();
  if (!d.root) throw ProtocolError(type_for_errors, "the document has no root element");
  if (d.root->nodeName() != "NFuseProtocol")
    throw ProtocolError(type_for_errors, "root element is <" + d.root->nodeName() + ">, expected <NFuseProtocol>");
  return d;
}

std::vector<Element*> children(const Element* e, const std::string& name = "") {
  std::vector<Element*> out;
  for (Node* n = e->firstChild(); n; n = n->nextSibling())
    if (n->nodeType() == Node::ELEMENT_NODE && (name.empty() || n->nodeName() == name)) out.push_back(static_cast<Element*>(n));
  return out;
}

/// Reads one request's fields; `path` names the element in errors.
class Reader {
 public:
  Reader(const Element* e, std::string path, std::string type) : e_(e), path_(std::move(path)), type_(std::move(type)) {}
  const Element* element() const { return e_; }
  const std::string& path() const { return path_; }
  [[noreturn]] void fail(const std::string& what) const { throw ProtocolError(type_, path_ + ": " + what); }
  std::optional<Reader> child(const std::string& name) const {
    const auto found = children(e_, name);
    if (found.empty()) return std::nullopt;
    if (found.size() > 1) Reader(found[1], path_ + "/" + name, type_).fail("appears " + std::to_string(found.size()) + " times, at most once");
    return Reader(found[0], path_ + "/" + name, type_);
  }
  Reader need(const std::string& name) const {
    auto c = child(name);
    if (!c) fail("<" + name + "> is missing");
    return *c;
  }
  std::vector<Reader> all(const std::string& name) const {
    std::vector<Reader> out;
    for (auto* c : children(e_, name)) out.emplace_back(c, path_ + "/" + name, type_);
    return out;
  }
  std::string text() const {
    if (!children(e_).empty()) fail("has child elements where text is expected");
    return checked(e_->innerText(), "text");
  }
  std::string text_of(const std::string& name, std::string fallback = "") const {
    auto c = child(name);
    return c ? c->text() : fallback;
  }
  std::string attr(const std::string& name) const { return checked(e_->getAttribute(name), "attribute " + name); }
  /// No field of these requests holds a control character (only as a character reference could one get here).
  std::string checked(std::string v, const std::string& what) const {
    for (const unsigned char c : v)
      if (c < 0x20 && c != '\t' && c != '\n') fail(what + " contains the control character " + std::to_string(c));
    if (what != "text")
      for (const unsigned char c : v)
        if (c == '\t' || c == '\n') fail(what + " contains a tab or line break");
    return v;
  }
  std::int64_t integer(std::int64_t lo, std::int64_t hi) const {
    std::string t = text();
    const auto b = t.find_first_not_of(" \t\r\n"), en = t.find_last_not_of(" \t\r\n");
    t = b == std::string::npos ? "" : t.substr(b, en - b + 1);
    std::int64_t v = 0;
    const auto [p, ec] = std::from_chars(t.data(), t.data() + t.size(), v);
    if (t.empty() || ec != std::errc() || p != t.data() + t.size()) fail("'" + t + "' is not an integer");
    if (v < lo || v > hi) fail(std::to_string(v) + " is outside " + std::to_string(lo) + ".." + std::to_string(hi));
    return v;
  }
  std::string choice(const std::string& value, std::initializer_list<const char*> allowed, const std::string& what) const {
    std::string list;
    for (const char* a : allowed) {
      if (value == a) return value;
      list += (list.empty() ? "" : ", ") + std::string(a);
    }
    fail(what + " '" + value + "' is not one of " + list);
  }

 private:
  const Element* e_;
  std::string path_;
  std::string type_;
};

Credentials read_credentials(const Reader& r) {
  Credentials c;
  c.user = r.need("UserName").text();
  if (c.user.empty()) r.need("UserName").fail("is empty");
  if (auto p = r.child("Password")) {
    const auto enc = p->attr("encoding");
    if (!enc.empty() && enc != "cleartext")
      p->fail("password encoding '" + enc + "' is not supported; send encoding=\"cleartext\" over TLS");
    c.password = p->text();
  }
  if (auto d = r.child("Domain")) {
    c.domain = d->text();
    if (const auto t = d->attr("type"); !t.empty()) c.domain_type = t;
  }
  return c;
}

std::optional<Credentials> optional_credentials(const Reader& r) {
  if (auto c = r.child("Credentials")) return read_credentials(*c);
  return std::nullopt;
}

Request read_request(const Reader& r) {
  const std::string type = r.element()->nodeName();
  if (type == "RequestValidateCredentials") return ValidateCredentials{read_credentials(r.need("Credentials"))};
  if (type == "RequestAppData") {
    AppDataRequest a;
    if (auto s = r.child("Scope")) {
      const auto t = s->attr("traverse");
      if (!t.empty()) a.scope = s->choice(t, {"onelevel", "subtree"}, "traverse");
    }
    for (const auto& d : r.all("DesiredDetails")) a.desired_details.push_back(d.text());
    if (auto s = r.child("ServerType")) a.server_type = s->choice(s->text(), {"win32", "x", "all"}, "server type");
    if (auto c = r.child("ClientType")) a.client_type = c->choice(c->text(), {"ica30", "rdp", "content", "rade", "all"}, "client type");
    a.credentials = optional_credentials(r);
    a.client_name = r.text_of("ClientName");
    a.client_address = r.text_of("ClientAddress");
    return a;
  }
  if (type == "RequestAddress") {
    AddressRequest a;
    a.app_name = r.need("Name").need("AppName").text();
    if (a.app_name.empty()) r.need("Name").need("AppName").fail("is empty");
    if (auto f = r.child("Flags")) {
      std::istringstream words(f->text());
      for (std::string w; words >> w;) a.flags.push_back(f->choice(w, {"alt-addr", "no-load-bias"}, "flag"));
    }
    a.credentials = optional_credentials(r);
    a.client_name = r.text_of("ClientName");
    a.client_address = r.text_of("ClientAddress");
    return a;
  }
  if (type == "RequestTicket") {
    TicketRequest t;
    t.credentials = read_credentials(r.need("Credentials"));
    if (auto k = r.child("TicketType")) t.ticket_type = k->choice(k->text(), {"CtxLogon"}, "ticket type");
    t.ticket_tag = r.text_of("TicketTag");
    if (auto l = r.child("TimetoLive")) t.time_to_live = l->integer(1, 86400);
    return t;
  }
  throw ProtocolError("", r.path() + ": unknown request type <" + type +
                              ">; this XML service answers RequestValidateCredentials, RequestAppData, RequestAddress, RequestTicket");
}

// ---- writing ----

class Writer {
 public:
  explicit Writer(std::string_view version)
      : w_(out_, Poco::XML::XMLWriter::WRITE_XML_DECLARATION | Poco::XML::XMLWriter::PRETTY_PRINT) {
    w_.setNewLine("\n");
    w_.setIndent("  ");
    w_.startDocument();
    w_.startDTD("NFuseProtocol", "", "NFuse.dtd");
    w_.endDTD();
    open("NFuseProtocol", {{"version", std::string(version)}});
  }
  void open(const std::string& name, std::initializer_list<std::pair<std::string, std::string>> attrs = {}) {
    Poco::XML::AttributesImpl a;
    for (const auto& [k, v] : attrs) a.addAttribute("", "", k, "CDATA", v);
    w_.startElement("", "", name, a);
  }
  void close(const std::string& name) { w_.endElement("", "", name); }
  void leaf(const std::string& name, const std::string& text, std::initializer_list<std::pair<std::string, std::string>> attrs = {}) {
    open(name, attrs);
    if (!text.empty()) w_.characters(text);
    close(name);
  }
  void empty(const std::string& name, std::initializer_list<std::pair<std::string, std::string>> attrs) {
    Poco::XML::AttributesImpl a;
    for (const auto& [k, v] : attrs) a.addAttribute("", "", k, "CDATA", v);
    w_.emptyElement("", "", name, a);
  }
  std::string finish() {
    close("NFuseProtocol");
    w_.endDocument();
    return out_.str();
  }

 private:
  std::ostringstream out_;
  Poco::XML::XMLWriter w_;
};

void write_credentials(Writer& w, const Credentials& c) {
  w.open("Credentials");
  w.leaf("UserName", c.user);
  w.leaf("Password", c.password, {{"encoding", "cleartext"}});
  if (!c.domain.empty() || c.domain_type != "NT") w.leaf("Domain", c.domain, {{"type", c.domain_type}});
  w.close("Credentials");
}

const char* flag(bool b) { return b ? "true" : "false"; }

}  // namespace

std::string request_type(const Request& r) {
  switch (r.index()) {
    case 0: return "RequestValidateCredentials";
    case 1: return "RequestAppData";
    case 2: return "RequestAddress";
    default: return "RequestTicket";
  }
}

Document parse_request(std::string_view xml) {
  const Doc d = load(xml, "");
  const auto requests = children(d.root);
  if (requests.size() != 1)
    throw ProtocolError(requests.empty() || !known_type(requests[0]->nodeName()) ? "" : requests[0]->nodeName(),
                        "NFuseProtocol: holds " + std::to_string(requests.size()) + " request elements, expected one");
  Document out;
  out.version = d.root->getAttribute("version");
  if (out.version.size() > 8 || out.version.find_first_not_of("0123456789.") != std::string::npos) {
    // Quoted only when short and printable: the reply must stay valid UTF-8 text.
    const bool shown = out.version.size() <= 16 &&
                       std::all_of(out.version.begin(), out.version.end(), [](char c) { return c >= 0x20 && c < 0x7f; });
    throw ProtocolError("", "NFuseProtocol: version " + (shown ? "'" + out.version + "'" : std::string("attribute")) +
                                " is not a protocol version like 5.4");
  }
  const std::string type = requests[0]->nodeName();
  out.request = read_request(Reader(requests[0], "NFuseProtocol/" + type, type));
  return out;
}

std::string write_request(const Document& d) {
  Writer w(d.version);
  const std::string type = request_type(d.request);
  w.open(type);
  std::visit(
      [&](const auto& r) {
        using T = std::decay_t<decltype(r)>;
        if constexpr (std::is_same_v<T, ValidateCredentials>) {
          write_credentials(w, r.credentials);
        } else if constexpr (std::is_same_v<T, AppDataRequest>) {
          w.empty("Scope", {{"traverse", r.scope}});
          for (const auto& x : r.desired_details) w.leaf("DesiredDetails", x);
          w.leaf("ServerType", r.server_type);
          w.leaf("ClientType", r.client_type);
          if (r.credentials) write_credentials(w, *r.credentials);
          if (!r.client_name.empty()) w.leaf("ClientName", r.client_name);
          if (!r.client_address.empty()) w.leaf("ClientAddress", r.client_address);
        } else if constexpr (std::is_same_v<T, AddressRequest>) {
          if (!r.flags.empty()) {
            std::string f;
            for (const auto& x : r.flags) f += (f.empty() ? "" : " ") + x;
            w.leaf("Flags", f);
          }
          w.open("Name");
          w.leaf("AppName", r.app_name);
          w.close("Name");
          if (r.credentials) write_credentials(w, *r.credentials);
          if (!r.client_name.empty()) w.leaf("ClientName", r.client_name);
          if (!r.client_address.empty()) w.leaf("ClientAddress", r.client_address);
        } else {
          write_credentials(w, r.credentials);
          w.leaf("TicketType", r.ticket_type);
          if (!r.ticket_tag.empty()) w.leaf("TicketTag", r.ticket_tag);
          w.leaf("TimetoLive", std::to_string(r.time_to_live));
        }
      },
      d.request);
  w.close(type);
  return w.finish();
}

std::string address_type(std::string_view address) {
  const auto colon = address.rfind(':');
  const bool port = colon != std::string_view::npos && colon + 1 < address.size() &&
                    address.find_first_not_of("0123456789", colon + 1) == std::string_view::npos;
  const auto host = port ? address.substr(0, colon) : address;
  const bool digits_and_dots = !host.empty() && host.find_first_not_of("0123456789.") == std::string_view::npos;
  const bool dotted = digits_and_dots && std::count(host.begin(), host.end(), '.') == 3;
  return std::string(dotted ? "dot" : "dns") + (port ? "-port" : "");
}

std::string write_reply(const Reply& reply, std::string_view version) {
  Writer w(version.empty() ? kVersion : version);
  std::visit(
      [&](const auto& r) {
        using T = std::decay_t<decltype(r)>;
        if constexpr (std::is_same_v<T, ValidateCredentialsReply>) {
          w.open("ResponseValidateCredentials");
          if (!r.error_id.empty()) {
            w.leaf("ErrorId", r.error_id);
          } else {
            w.leaf("DaysUntilPasswordExpiry", std::to_string(r.days_until_password_expiry));
            w.leaf("ShowPasswordExpiryWarning", flag(r.show_password_expiry_warning));
          }
          w.close("ResponseValidateCredentials");
        } else if constexpr (std::is_same_v<T, AppDataReply>) {
          w.open("ResponseAppData");
          if (!r.error_id.empty()) {
            w.leaf("ErrorId", r.error_id);
          } else {
            w.open("AppDataSet");
            for (const auto& a : r.apps) {
              w.open("AppData");
              w.leaf("InName", a.in_name);
              w.leaf("FName", a.f_name);
              w.open("Details");
              w.open("Settings", {{"appisdisabled", flag(a.disabled)}, {"appisdesktop", flag(a.desktop)}});
              w.leaf("Encryption", a.encryption, {{"minimum", "false"}});
              w.close("Settings");
              w.open("AccessList");
              if (a.anonymous) w.empty("AnonymousUser", {});
              auto principal = [&](const char* kind, const char* name_tag, const std::string& full) {
                const auto slash = full.find('\\');
                w.open(kind);
                w.leaf(name_tag, slash == std::string::npos ? full : full.substr(slash + 1));
                if (slash != std::string::npos) w.leaf("Domain", full.substr(0, slash), {{"type", "NT"}});
                w.close(kind);
              };
              for (const auto& u : a.users) principal("User", "UserName", u);
              for (const auto& g : a.groups) principal("Group", "GroupName", g);
              w.close("AccessList");
              w.close("Details");
              w.leaf("ServerType", a.server_type);
              for (const auto& c : a.client_types) w.leaf("ClientType", c);
              w.close("AppData");
            }
            w.close("AppDataSet");
          }
          w.close("ResponseAppData");
        } else if constexpr (std::is_same_v<T, AddressReply>) {
          w.open("ResponseAddress");
          if (!r.error_id.empty()) {
            w.leaf("ErrorId", r.error_id);
          } else {
            w.leaf("ServerAddress", r.server_address, {{"addresstype", r.address_type}});
            w.leaf("ServerType", "win32");
            w.leaf("ConnectionType", "tcp");
            w.leaf("ClientType", "ica30");
            w.leaf("TicketTag", r.ticket_tag);
          }
          w.close("ResponseAddress");
        } else {
          w.open("ResponseTicket");
          if (!r.error_id.empty()) w.leaf("ErrorId", r.error_id);
          else w.leaf("Ticket", r.ticket);
          w.close("ResponseTicket");
        }
      },
      reply);
  return w.finish();
}

std::string write_error(const ProtocolError& e, std::string_view version) {
  Writer w(version.empty() ? kVersion : version);
  const std::string& type = e.request_type();
  const std::string element = known_type(type) ? "Response" + type.substr(7) : "ResponseError";
  w.open(element);
  w.leaf("ErrorId", kUnspecified);
  w.leaf("Detail", e.what());
  w.close(element);
  return w.finish();
}

Reply parse_reply(std::string_view xml, std::string* detail) {
  const Doc d = load(xml, "");
  const auto replies = children(d.root);
  if (replies.size() != 1) throw ProtocolError("", "NFuseProtocol: holds " + std::to_string(replies.size()) + " reply elements, expected one");
  const std::string type = replies[0]->nodeName();
  const Reader r(replies[0], "NFuseProtocol/" + type, type);
  const std::string error = r.text_of("ErrorId");
  if (detail) *detail = r.text_of("Detail");
  if (type == "ResponseValidateCredentials") {
    ValidateCredentialsReply v;
    v.error_id = error;
    if (auto x = r.child("DaysUntilPasswordExpiry")) v.days_until_password_expiry = x->integer(-1, 100000);
    v.show_password_expiry_warning = r.text_of("ShowPasswordExpiryWarning") == "true";
    return v;
  }
  if (type == "ResponseAppData") {
    AppDataReply a;
    a.error_id = error;
    if (auto set = r.child("AppDataSet")) {
      for (const auto& x : set->all("AppData")) {
        AppData app;
        app.in_name = x.text_of("InName");
        app.f_name = x.text_of("FName");
        if (auto det = x.child("Details")) {
          if (auto s = det->child("Settings")) {
            app.disabled = s->attr("appisdisabled") == "true";
            app.desktop = s->attr("appisdesktop") == "true";
            app.encryption = s->text_of("Encryption");
          }
          if (auto acl = det->child("AccessList")) {
            app.anonymous = acl->child("AnonymousUser").has_value();
            auto name = [](const Reader& p, const char* tag) {
              const auto dom = p.text_of("Domain");
              return (dom.empty() ? "" : dom + "\\") + p.text_of(tag);
            };
            for (const auto& u : acl->all("User")) app.users.push_back(name(u, "UserName"));
            for (const auto& g : acl->all("Group")) app.groups.push_back(name(g, "GroupName"));
          }
        }
        app.server_type = x.text_of("ServerType");
        app.client_types.clear();
        for (const auto& c : x.all("ClientType")) app.client_types.push_back(c.text());
        a.apps.push_back(std::move(app));
      }
    }
    return a;
  }
  if (type == "ResponseAddress") {
    AddressReply a;
    a.error_id = error;
    if (auto s = r.child("ServerAddress")) {
      a.server_address = s->text();
      a.address_type = s->attr("addresstype");
    }
    a.ticket_tag = r.text_of("TicketTag");
    return a;
  }
  if (type == "ResponseTicket") return TicketReply{r.text_of("Ticket"), error};
  throw ProtocolError("", "NFuseProtocol/" + type + ": " + (error.empty() ? "unknown reply type" : "error " + error + ": " + r.text_of("Detail")));
}

}  // namespace deskfarm::nfuse
