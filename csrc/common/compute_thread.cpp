#include "common/compute_thread.h"

#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>

namespace nlm {
namespace {

class ComputeThread {
public:
    ComputeThread() : thread_([this] { loop(); }) { thread_.detach(); }

    void run(const std::function<void()>& f) {
        if (std::this_thread::get_id() == id_) {
            f();
            return;
        }
        std::lock_guard<std::mutex> one_at_a_time(callers_);
        std::exception_ptr error;
        {
            std::unique_lock<std::mutex> lock(mu_);
            task_ = &f;
            error_ = nullptr;
            done_ = false;
            cv_.notify_all();
            cv_.wait(lock, [this] { return done_; });
            error = error_;
        }
        if (error) std::rethrow_exception(error);
    }

private:
    void loop() {
        {
            std::lock_guard<std::mutex> lock(mu_);
            id_ = std::this_thread::get_id();
            started_ = true;
        }
        cv_.notify_all();
        std::unique_lock<std::mutex> lock(mu_);
        for (;;) {
            cv_.wait(lock, [this] { return task_ != nullptr; });
            const std::function<void()>* f = task_;
            task_ = nullptr;
            lock.unlock();
            std::exception_ptr error;
            try {
                (*f)();
            } catch (...) {
                error = std::current_exception();
            }
            lock.lock();
            error_ = error;
            done_ = true;
            cv_.notify_all();
        }
    }

public:
    void wait_started() {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return started_; });
    }

private:
    std::mutex callers_;
    std::mutex mu_;
    std::condition_variable cv_;
    const std::function<void()>* task_ = nullptr;
    std::exception_ptr error_;
    bool done_ = false;
    bool started_ = false;
    std::thread::id id_;
    std::thread thread_;
};

ComputeThread& compute_thread() {
    // Never destroyed: the thread lives as long as the process (no join at exit, when Python may
    // already have torn down the module).
    static ComputeThread* t = [] {
        auto* c = new ComputeThread();
        c->wait_started();
        return c;
    }();
    return *t;
}

}  // namespace

void run_on_compute_thread(const std::function<void()>& f) { compute_thread().run(f); }

}  // namespace nlm
