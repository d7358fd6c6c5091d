#pragma once
// The XML service's HTTP threads ask; the controller answers on its own executor. ExecutorBroker hands each call
// of nfuse::Broker to the instance's executor through its Lifeline, so the controller's state needs no lock and
// no HTTP thread ever runs controller code. Once the instance has stopped the call is answered at once with
// "unspecified" (the controller is gone) instead of letting the HTTP thread wait for its timeout.
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include <deskfarm/nfuse/xml_service.hpp>
#include <deskfarm/sdk/lifeline.hpp>

namespace deskfarm::ddc {

class ExecutorBroker final : public nfuse::Broker {
 public:
  /// `target` runs on the executor `line` posts to and lives while the line is alive.
  ExecutorBroker(std::shared_ptr<sdk::Lifeline> line, nfuse::Broker& target) : line_(std::move(line)), target_(&target) {}

  void validate_credentials(const nfuse::ValidateCredentials& req, std::function<void(nfuse::ValidateCredentialsReply)> done) override {
    hand(req, std::move(done), [](nfuse::Broker& b, const auto& q, auto d) { b.validate_credentials(q, std::move(d)); },
         nfuse::ValidateCredentialsReply{-1, false, nfuse::kUnspecified});
  }
  void app_data(const nfuse::AppDataRequest& req, std::function<void(nfuse::AppDataReply)> done) override {
    hand(req, std::move(done), [](nfuse::Broker& b, const auto& q, auto d) { b.app_data(q, std::move(d)); },
         nfuse::AppDataReply{{}, nfuse::kUnspecified});
  }
  void address(const nfuse::AddressRequest& req, std::function<void(nfuse::AddressReply)> done) override {
    hand(req, std::move(done), [](nfuse::Broker& b, const auto& q, auto d) { b.address(q, std::move(d)); },
         nfuse::AddressReply{"", "dot", "", nfuse::kUnspecified});
  }
  void ticket(const nfuse::TicketRequest& req, std::function<void(nfuse::TicketReply)> done) override {
    hand(req, std::move(done), [](nfuse::Broker& b, const auto& q, auto d) { b.ticket(q, std::move(d)); },
         nfuse::TicketReply{"", nfuse::kUnspecified});
  }
  void launch(const std::string& ticket, std::function<void(std::optional<nfuse::IcaFile>)> done) override {
    hand(ticket, std::move(done), [](nfuse::Broker& b, const auto& q, auto d) { b.launch(q, std::move(d)); },
         std::optional<nfuse::IcaFile>{});
  }

 private:
  template <class Req, class Rep, class Call>
  void hand(const Req& req, std::function<void(Rep)> done, Call call, Rep when_stopped) {
    // `done` is shared: post() may drop the task (instance stopped), and then it is answered here instead.
    auto answer = std::make_shared<std::function<void(Rep)>>(std::move(done));
    nfuse::Broker* target = target_;
    if (!line_->post([target, req, answer, call] { call(*target, req, *answer); })) (*answer)(std::move(when_stopped));
  }

  std::shared_ptr<sdk::Lifeline> line_;
  nfuse::Broker* target_;
};

}  // namespace deskfarm::ddc
