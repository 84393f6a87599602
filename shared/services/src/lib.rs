//! The composition root: the local binary, the three Lambdas, the bench and every test rig
//! build the use cases here, from ports, so the wiring (which store serves which use case, the
//! receipt schedule behind every async touchpoint) is written once.
#![forbid(unsafe_code)]

use std::sync::Arc;

use touchpoint::clock::Clock;
use touchpoint::delivery::{DeliveryStore, DispatchIntake, ReceiptSchedule};
use touchpoint::limits::SharedLimits;
use touchpoint::notify::{NotificationOutbox, Notifications};
use touchpoint::ports::TouchpointStore;
use touchpoint::reporting::Reporting;
use touchpoint::{Touchpoints, UrlPolicy};
use touchpoint_dispatcher::{Dispatcher, DispatcherConfig};
use touchpoint_outbound::Outbound;
use touchpoint_receipt_poller::{PollerConfig, ReceiptPoller};
use touchpoint_receiver::limits::ReceiverLimits;
use touchpoint_receiver::notify::NotificationSender;
use touchpoint_receiver::{EnumOptions, TestSend};

/// What the use cases run on.
#[derive(Clone)]
pub struct Ports {
    pub touchpoints: Arc<dyn TouchpointStore>,
    pub delivery: Arc<dyn DeliveryStore>,
    pub intake: Arc<dyn DispatchIntake>,
    pub schedule: Arc<dyn ReceiptSchedule>,
    pub clock: Arc<dyn Clock>,
    pub outbound: Outbound,
    /// Where the receivers' limits are held when several processes send to them (every
    /// Lambda instance on AWS); `None`: in this process (the local binary).
    pub limits: Option<Arc<dyn SharedLimits>>,
    /// Where operational notifications wait to be sent; `None`: none are made.
    pub outbox: Option<Arc<dyn NotificationOutbox>>,
}

/// How the use cases behave.
#[derive(Clone, Debug)]
pub struct Settings {
    pub urls: UrlPolicy,
    pub dispatcher: DispatcherConfig,
    pub poller: PollerConfig,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            urls: UrlPolicy {
                allow_plain_http: false,
            },
            dispatcher: DispatcherConfig::default(),
            poller: PollerConfig::default(),
        }
    }
}

impl Settings {
    /// The poller follows the dispatcher's receipt interval and request timeout (one setting
    /// each for the deployment).
    pub fn with_dispatcher(mut self, dispatcher: DispatcherConfig) -> Settings {
        self.poller.interval = dispatcher.receipt_poll_interval;
        self.poller.request_timeout = dispatcher.request_timeout;
        self.poller.time_scale = dispatcher.time_scale;
        self.dispatcher = dispatcher;
        self
    }
}

/// Every use case, wired once.
#[derive(Clone)]
pub struct Services {
    pub touchpoints: Touchpoints,
    pub reporting: Reporting,
    pub dispatcher: Arc<Dispatcher>,
    pub test_send: TestSend,
    /// The enum-options cache: the dispatcher's, shared with the options API.
    pub options: Arc<EnumOptions>,
    pub poller: Arc<ReceiptPoller>,
    pub intake: Arc<dyn DispatchIntake>,
    pub clock: Arc<dyn Clock>,
    /// What every emitter tells, and what sends a notification from its outbox.
    pub notifications: Arc<Notifications>,
    pub notification_sender: NotificationSender,
}

impl Services {
    /// The use cases on `ports`. The receipt schedule is always wired: an async touchpoint's
    /// schedule is made when it is created, enabled or switched to async, and made sure of
    /// before its batches go out.
    pub fn new(ports: Ports, settings: Settings) -> Services {
        let Ports {
            touchpoints: store,
            delivery,
            intake,
            schedule,
            clock,
            outbound,
            limits: shared_limits,
            outbox,
        } = ports;
        let notifications = Arc::new(match outbox {
            Some(outbox) => Notifications::new(store.clone(), outbox, clock.clone()),
            None => Notifications::none(),
        });
        let notification_sender = NotificationSender::new(
            store.clone(),
            outbound.clone(),
            clock.clone(),
            settings.dispatcher.time_scale,
        );
        let touchpoints = Touchpoints::new(store.clone(), clock.clone(), settings.urls)
            .with_receipt_schedule(schedule.clone(), delivery.clone())
            .with_time_scale(settings.dispatcher.time_scale)
            .with_notifications(notifications.clone());
        let test_send = TestSend::new(
            outbound.clone(),
            clock.clone(),
            settings.dispatcher.request_timeout,
            settings.dispatcher.time_scale,
        );
        let mut dispatcher = Dispatcher::new(
            store.clone(),
            delivery.clone(),
            outbound.clone(),
            clock.clone(),
            settings.dispatcher.clone(),
        )
        .with_receipt_schedule(schedule.clone());
        if let Some(shared) = shared_limits {
            dispatcher = dispatcher.with_limits(Arc::new(
                ReceiverLimits::new(settings.dispatcher.per_touchpoint_concurrency)
                    .with_time_scale(settings.dispatcher.time_scale)
                    .with_health_policy(settings.dispatcher.health.clone())
                    .with_shared(shared, clock.clone()),
            ));
        }
        let dispatcher = dispatcher.with_notifications(notifications.clone());
        // One set of receiver limits for every sender of the process.
        let limits = dispatcher.limits();
        let test_send = test_send.with_limits(limits.clone());
        let poller = ReceiptPoller::new(
            store,
            delivery.clone(),
            schedule,
            outbound,
            clock.clone(),
            settings.poller,
        )
        .with_limits(limits)
        .with_notifications(notifications.clone(), delivery.clone());
        Services {
            touchpoints,
            reporting: Reporting::new(delivery, intake.clone(), clock.clone()),
            options: dispatcher.options(),
            dispatcher: Arc::new(dispatcher),
            test_send,
            poller: Arc::new(poller),
            intake,
            clock,
            notifications,
            notification_sender,
        }
    }

    /// Everything on one embedded store (the local binary and its tests).
    #[cfg(feature = "embedded")]
    pub fn embedded(
        store: &touchpoint_embedded::SqliteStore,
        outbound: Outbound,
        clock: Arc<dyn Clock>,
        settings: Settings,
    ) -> Services {
        let store = Arc::new(store.clone());
        Services::new(
            Ports {
                touchpoints: store.clone(),
                delivery: store.clone(),
                intake: store.clone(),
                schedule: store.clone(),
                clock,
                outbound,
                limits: None,
                outbox: Some(store),
            },
            settings,
        )
    }

    /// Everything on DynamoDB, SQS and EventBridge Scheduler under `names`.
    #[cfg(feature = "aws")]
    pub fn aws(
        clients: &touchpoint_aws::Clients,
        names: &touchpoint_aws::AwsNames,
        outbound: Outbound,
        settings: Settings,
    ) -> Result<Services, String> {
        Services::aws_grouped(clients, names, outbound, settings).map(|(services, _)| services)
    }

    /// [`Services::aws`], and the groups of its ledger's checkpoints (see
    /// `touchpoint_aws::group`), which the dispatcher Lambda tells how many records it handles.
    #[cfg(feature = "aws")]
    pub fn aws_grouped(
        clients: &touchpoint_aws::Clients,
        names: &touchpoint_aws::AwsNames,
        outbound: Outbound,
        settings: Settings,
    ) -> Result<(Services, Arc<touchpoint_aws::group::Groups>), String> {
        let mut settings = settings;
        settings.dispatcher.health = names.breaker.clone();
        let clock: Arc<dyn Clock> = Arc::new(touchpoint::SystemClock);
        let delivery = Arc::new(touchpoint_aws::DynamoDelivery::new(clients, names));
        let groups = delivery.groups();
        let services = Services::new(
            Ports {
                touchpoints: Arc::new(touchpoint_aws::DynamoTouchpoints::new(
                    clients.dynamodb.clone(),
                    names,
                )),
                delivery: delivery.clone(),
                intake: delivery,
                schedule: Arc::new(touchpoint_aws::SchedulerReceipts::new(
                    clients.scheduler.clone(),
                    names,
                )?),
                clock: clock.clone(),
                outbound,
                limits: Some(Arc::new(touchpoint_aws::DynamoLimits::new(
                    clients.dynamodb.clone(),
                    &names.delivery_table,
                ))),
                outbox: names.dispatch_queue_url.as_ref().map(|url| {
                    Arc::new(touchpoint_aws::notify::SqsOutbox::new(
                        clients.sqs.clone(),
                        url.clone(),
                        clock,
                    )) as Arc<dyn NotificationOutbox>
                }),
            },
            settings,
        );
        Ok((services, groups))
    }

    /// The admin API's state, with callers identified by `auth`.
    #[cfg(feature = "api")]
    pub fn app_state(
        &self,
        auth: Arc<dyn touchpoint_admin_api::Authenticator>,
    ) -> touchpoint_admin_api::AppState {
        touchpoint_admin_api::AppState {
            touchpoints: self.touchpoints.clone(),
            reporting: self.reporting.clone(),
            auth,
            intake: self.intake.clone(),
            test_send: self.test_send.clone(),
            options: self.options.clone(),
            clock: self.clock.clone(),
            limits: self.dispatcher.limits(),
        }
    }
}
